"""The offline Qwen2 tokenizer against facts of the real Qwen2.5 tokenizer."""

import pytest

from reasonrank_jax.errors import InputError
from reasonrank_jax.text.tokenizer import eos_token_ids, load_tokenizer


def test_qwen2_tokenizer_ids_and_specials(qwen2_tokenizer_dir):
    tok = load_tokenizer(qwen2_tokenizer_dir)
    # ids of the real Qwen2 vocabulary: "Hello"=9707, " world"=1879, " "=220, digits one token each
    assert tok.encode("Hello world 12") == [9707, 1879, 220, 16, 17]
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert eos_token_ids(tok) == [151645, 151643]
    assert tok.encode("a<|im_end|>b") == [64, 151645, 65]
    text = "Ünïcödé ✓ 中文 [12]\n\n  tabs\t"
    assert tok.decode(tok.encode(text)) == text


def test_qwen25_chat_template(qwen2_tokenizer_dir):
    tok = load_tokenizer(qwen2_tokenizer_dir)
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n")
    assert tok.apply_chat_template(msgs[1:], tokenize=False, add_generation_prompt=False) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nU<|im_end|>\n")


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(InputError, match="missing_dir"):
        load_tokenizer(tmp_path / "missing_dir")
    with pytest.raises(InputError, match="no tokenizer files"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot load tokenizer"):
        load_tokenizer(tmp_path)


def test_sentencepiece_only_directory(tmp_path):
    import sentencepiece as spm

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["the quick brown fox jumps over the lazy dog", "passages ranked by relevance",
                                 "a query about the sky and the sea"] * 50))
    model_dir = tmp_path / "sp"
    model_dir.mkdir()
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(model_dir / "tokenizer"), vocab_size=60,
                                   model_type="bpe")
    (model_dir / "tokenizer.vocab").unlink()
    tok = load_tokenizer(model_dir)
    ids = tok.encode("the quick fox")
    assert tok.decode(ids) == "the quick fox"
    pieces = tok.convert_ids_to_tokens(ids)
    assert tok.convert_tokens_to_string(pieces[:2]) == tok.decode(ids[:2])
    assert tok.tokenize("the quick fox") == pieces
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True) \
        == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert eos_token_ids(tok) == [tok.eos_token_id]
