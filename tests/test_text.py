"""Prompts against hand-written SPEC §1 strings (real Qwen2 tokenizer, built offline) and SPEC §2 parsing."""

import pytest

from reasonrank_jax.errors import InputError
from reasonrank_jax.text import (apply_permutation, build_messages, build_prompt, eos_token_ids, format_ranking,
                                 load_tokenizer, parse_permutation, parse_permutation_with_status)

REASONING_SYSTEM = (
    "You are RankLLM, an intelligent assistant that can rank passages based on their relevance to the query. Given a "
    "query and a passage list, you first thinks about the reasoning process in the mind and then provides the answer "
    "(i.e., the reranked passage list). The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
    "</answer>.")
PLAIN_SYSTEM = ("You are RankLLM, an intelligent assistant that can rank passages based on their relevance to the "
                "query.")


@pytest.fixture(scope="module")
def tokenizer(qwen2_tokenizer_dir):
    return load_tokenizer(qwen2_tokenizer_dir)


def test_qwen2_tokenizer_has_real_ids(tokenizer):
    assert tokenizer.encode("Hello world", add_special_tokens=False) == [9707, 1879]  # Qwen2's own ids
    assert tokenizer.tokenize("2024") == ["2", "0", "2", "4"]  # digits one token each
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644,
                                                                                                 151645]
    assert eos_token_ids(tokenizer) == [151645, 151643]


PASSAGES = [
    {"docid": "d1", "title": "Cells", "text": "  The cell [1] is the unit of life.  "},
    {"docid": "d2", "title": "", "contents": "Mitochondria make ATP [12] for the cafÃ© owner."},
    {"docid": "d3", "segment": "\u201cQuoted\u201d text", "text": None},
]


def test_reasoning_prompt_is_byte_identical(tokenizer):
    prompt = build_prompt(tokenizer, "  What does [3] the cell do?  ", PASSAGES)
    user = (
        "I will provide you with 3 passages, each indicated by a numerical identifier []. Rank the passages based on "
        "their relevance to the search query: What does (3) the cell do?.\n"
        "\n"
        "[1] Title: Cells Content:   The cell (1) is the unit of life.\n"  # stripped as a whole, after composing
        "[2] Mitochondria make ATP (12) for the caf\u00e9 owner.\n"
        "[3] \"Quoted\" text\n"
        "Search Query: What does (3) the cell do?.\n"
        "Rank the 3 passages above based on their relevance to the search query. All the passages should be "
        "included and listed using identifiers, in descending order of relevance. The format of the answer should be "
        "[] > [], e.g., [2] > [1].")
    expected = (f"<|im_start|>system\n{REASONING_SYSTEM}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
                "<|im_start|>assistant\n")
    assert prompt == expected


def test_qwen3_and_plain_modes(tokenizer):
    post_head = ("Search Query: q (1).\nRank the 1 passages above based on their relevance to the search query. All "
                 "the passages should be included and listed using identifiers, in descending order of relevance. ")
    head = ("I will provide you with 1 passages, each indicated by a numerical identifier []. Rank the passages based "
            "on their relevance to the search query: q (1).\n\n[1] alpha\n")
    qwen3 = build_messages(tokenizer, "q [1]", [{"text": "alpha"}], mode="rank_GPT_qwen3")
    assert qwen3[0] == {"role": "system", "content": PLAIN_SYSTEM}
    assert qwen3[1]["content"] == head + post_head + (
        "The final ranked list should be enclosed within <answer> </answer> tags, i.e., <answer> ranked list here "
        "</answer>. The format of ranked list should be [] > [], e.g., [2] > [1]. Only respond with the ranking "
        "results, do not say any word or explain.")
    plain = build_messages(tokenizer, "q [1]", [{"text": "alpha"}], mode="rank_GPT")
    assert plain[0]["content"] == PLAIN_SYSTEM
    assert plain[1]["content"] == head + post_head + (
        "The output format should be [] > [], e.g., [2] > [1]. Only respond with the ranking results, do not say "
        "any word or explain.")
    with pytest.raises(ValueError, match="mode"):
        build_messages(tokenizer, "q", [{"text": "a"}], mode="rank_GPT_other")


def test_truncation_in_tokens_then_bracket_rewrite(tokenizer):
    passage = {"text": "Hello world [7] is long text"}
    # Qwen2 tokens: Hello | _world | _[ | 7 | ] | _is | ...: five tokens end inside the brackets' span.
    user = build_messages(tokenizer, "q", [passage], max_passage_length=5)[1]["content"]
    assert "\n[1] Hello world [7]\n" not in user and "\n[1] Hello world (7)\n" in user
    user = build_messages(tokenizer, "q", [passage], max_passage_length=2)[1]["content"]
    assert "\n[1] Hello world\n" in user
    user = build_messages(tokenizer, "q", [passage], max_passage_length=512)[1]["content"]
    assert "\n[1] Hello world (7) is long text\n" in user


def test_mojibake_repaired_in_query_position_too(tokenizer):
    # The rendered prompt passes through ftfy once more: mojibake in the query is repaired there.
    prompt = build_prompt(tokenizer, "cafÃ© [2]", [{"text": "x"}])
    assert "search query: caf\u00e9 (2).\n" in prompt and "Ã" not in prompt


def test_missing_text_field_is_an_error(tokenizer):
    with pytest.raises(KeyError, match="text fields"):
        build_messages(tokenizer, "q", [{"docid": "x"}])


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(InputError, match="no tokenizer files"):
        load_tokenizer(tmp_path)


def test_sentencepiece_directory(tmp_path):
    import sentencepiece as spm

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"passage number {i} talks about cells and energy" for i in range(200)))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "tokenizer"), vocab_size=60,
                                   model_type="bpe")
    model_dir = tmp_path / "sp"
    model_dir.mkdir()
    (tmp_path / "tokenizer.model").rename(model_dir / "tokenizer.model")
    tok = load_tokenizer(model_dir)
    prompt = build_prompt(tok, "cells", [{"text": "energy of cells"}])
    assert prompt.startswith("<|im_start|>system\n") and "[1] energy of cells\n" in prompt
    assert tok.decode(tok.encode("cells and energy")) == "cells and energy"


# ---------------------------------------------------------------------------------------------- parsing (SPEC §2)

@pytest.mark.parametrize("output, num, expected, ok", [
    ("<think>x</think> <answer>[2] > [3] > [1]</answer>", 3, [1, 2, 0], True),
    ("<think>[3]</think>\n<answer>[2] > [1]</answer>", 3, [1, 0, 2], True),  # think ignored; missing appended
    ("<THINK>x</THINK><ANSWER>[3] > [2]</ANSWER>", 3, [2, 1, 0], True),  # lowercased first
    ("<answer>[1] > [1] > [3]", 4, [0, 2, 1, 3], True),  # no closing tag: after the last <answer>; duplicates
    ("<answer>[9]</answer> then <answer>[2] > [5]", 3, [1, 0, 2], True),  # last <answer>; 5 is out of window
    ("[0] > [4] > [2]", 4, [3, 1, 0, 2], True),  # no tags: whole text; 0 -> index -1 dropped
    ("I cannot rank these.", 3, [0, 1, 2], False),
    ("", 2, [0, 1], False),
    ("<think>a</think> <answer>[21] > [30]</answer>", 20, list(range(20)), False),
    ("<think>[2] > [1]</think> <answer></answer>", 2, [0, 1], False),  # empty answer: nothing from the think block
])
def test_parse_permutation(output, num, expected, ok):
    assert parse_permutation(output, num) == expected
    assert parse_permutation_with_status(output, num) == (expected, ok)


def test_apply_permutation_keeps_scores_at_positions():
    docids, scores = ["a", "b", "c", "d"], [4.0, 3.0, 2.0, 1.0]
    perm = parse_permutation("<think>t</think><answer>[3] > [1]</answer>", 4)
    assert apply_permutation(docids, perm) == ["c", "a", "b", "d"]
    assert scores == [4.0, 3.0, 2.0, 1.0]  # positions keep their scores
    with pytest.raises(ValueError):
        apply_permutation(docids, [0, 0, 1, 2])
    assert format_ranking([3, 1, 2]) == "[3] > [1] > [2]"
