"""The ReasonRank prompt protocol (SPEC §1): the released checkpoints were trained on exactly these strings.

Modes: `rank_GPT_reasoning` (7B/32B, default), `rank_GPT_qwen3` (the Qwen3-8B variant) and `rank_GPT` (no reasoning).
"""

from __future__ import annotations

import dataclasses
import re

import ftfy

from reasonrank_jax.errors import InputError

MODES = ("rank_GPT_reasoning", "rank_GPT_qwen3", "rank_GPT")

PLAIN_SYSTEM = "You are RankLLM, an intelligent assistant that can rank passages based on their relevance to the query."
# "you first thinks" is part of the protocol: the checkpoints were trained on it.
REASONING_SYSTEM = (
    PLAIN_SYSTEM[:-1] + ". Given a query and a passage list, you first thinks about the reasoning process in the mind "
    "and then provides the answer (i.e., the reranked passage list). The reasoning process and answer are enclosed "
    "within <think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>.")

_POST_COMMON = ("Search Query: {query}.\nRank the {num} passages above based on their relevance to the search query. "
                "All the passages should be included and listed using identifiers, in descending order of relevance. ")
_POST = {
    "rank_GPT_reasoning": _POST_COMMON + "The format of the answer should be [] > [], e.g., [2] > [1].",
    "rank_GPT_qwen3": _POST_COMMON + (
        "The final ranked list should be enclosed within <answer> </answer> tags, i.e., <answer> ranked list here "
        "</answer>. The format of ranked list should be [] > [], e.g., [2] > [1]. Only respond with the ranking "
        "results, do not say any word or explain."),
    "rank_GPT": _POST_COMMON + ("The output format should be [] > [], e.g., [2] > [1]. Only respond with the ranking "
                                "results, do not say any word or explain."),
}
_SYSTEM = {"rank_GPT_reasoning": REASONING_SYSTEM, "rank_GPT_qwen3": PLAIN_SYSTEM, "rank_GPT": PLAIN_SYSTEM}
_PREFIX = ("I will provide you with {num} passages, each indicated by a numerical identifier []. Rank the passages "
           "based on their relevance to the search query: {query}.\n")
_TEXT_FIELDS = ("text", "segment", "contents", "body", "passage", "content")  # SPEC order; BRIGHT's "content" last
_BRACKETED_NUMBER = re.compile(r"\[(\d+)\]")


@dataclasses.dataclass(frozen=True)
class SamplingDefaults:
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    max_new_tokens: int


# SPEC §1-§2: greedy for the reasoning 7B/32B models (reasoning_maxlen 3072 + 100); Qwen3's recommended sampling.
SAMPLING_DEFAULTS = {
    "rank_GPT_reasoning": SamplingDefaults(0.0, 1.0, 0, 0.0, 3172),
    "rank_GPT_qwen3": SamplingDefaults(0.6, 0.95, 20, 0.0, 3172),
    "rank_GPT": SamplingDefaults(0.0, 1.0, 0, 0.0, 200),
}


def _rewrite_brackets(text: str) -> str:
    """Every `[n]` becomes `(n)`, so passage and query text cannot be mistaken for identifiers."""
    return _BRACKETED_NUMBER.sub(r"(\1)", text)


def clean_query(query: str) -> str:
    return _rewrite_brackets(query).strip()


def passage_content(tokenizer, passage: dict, max_passage_length: int) -> str:
    """`Title: {title} Content: {text}` (or the text), stripped, ftfy-repaired, cut to `max_passage_length` tokens."""
    doc = passage.get("doc", passage) if isinstance(passage.get("doc"), dict) else passage
    text = next((doc[f] for f in _TEXT_FIELDS if doc.get(f) is not None), None)
    if text is None:
        raise KeyError(f"passage has none of the text fields {_TEXT_FIELDS}: keys {sorted(doc)}")
    title = doc.get("title")
    content = f"Title: {title} Content: {text}" if title else str(text)
    content = ftfy.fix_text(content.strip())
    # Always the tokenizer round trip, as the original: it also applies the tokenizer's normaliser (Qwen2: NFC).
    content = tokenizer.convert_tokens_to_string(tokenizer.tokenize(content)[:max_passage_length])
    return _rewrite_brackets(content)


def build_messages(tokenizer, query: str, passages: list[dict], mode: str = "rank_GPT_reasoning",
                   max_passage_length: int = 512) -> list[dict]:
    """The chat messages [system, user] of one window."""
    if mode not in MODES:
        raise InputError(f"unknown prompt mode {mode!r} (known: {', '.join(MODES)})", field="mode")
    query = clean_query(query)
    num = len(passages)
    lines = "".join(f"[{i}] {passage_content(tokenizer, p, max_passage_length)}\n"
                    for i, p in enumerate(passages, start=1))
    user = _PREFIX.format(num=num, query=query) + "\n" + lines + _POST[mode].format(num=num, query=query)
    return [{"role": "system", "content": _SYSTEM[mode]}, {"role": "user", "content": user}]


def render_messages(tokenizer, messages: list[dict]) -> str:
    """The tokenizer's own chat template with the generation prompt, then ftfy once more (SPEC §1)."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return ftfy.fix_text(prompt)


def build_prompt(tokenizer, query: str, passages: list[dict], mode: str = "rank_GPT_reasoning",
                 max_passage_length: int = 512) -> str:
    """The rendered prompt string for one window of passages (dicts with text/title fields, SPEC §1)."""
    return render_messages(tokenizer, build_messages(tokenizer, query, passages, mode, max_passage_length))
