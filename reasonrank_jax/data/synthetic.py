"""A synthetic reranking task for the learning tests, GRPO and the end-to-end demo: small enough for a tiny decoder.

It has the real task's shape: queries, a corpus, graded qrels, a noisy first-stage run, sliding windows over it,
the exact ``rank_GPT_reasoning`` prompt of :mod:`reasonrank_jax.text.prompts`, and responses
``<think>…</think> <answer>[i] > [j] > …</answer>`` (SPEC §1, §2, §6) — but with a vocabulary of a few dozen
words, passages of a few words and windows of 8, so a prompt is about 270 tokens of the task's own tokenizer (a
Qwen2-style byte-level BPE of under 500 tokens) and a response about 85.

The task, everything a pure function of the :class:`SyntheticTask` parameters (seed included):

* A **query** is 2-3 distinct topic words (``"apple river"``). A **passage** is 3-6 words: topic words, filler
  words, and negations ``no X``. A query word in a passage is a *mention*; ``no river`` is a *negated mention*.
* **True relevance** (the qrels, graded) = the number of query words a passage mentions without negation.
  Each query's candidates hold ``num_relevant`` relevant passages (grade >= 1), ``num_decoys`` decoys (only negated
  mentions: grade 0, but lexically they match) and unrelated ones; ``no Y`` of non-query words also occurs, so
  ``no`` alone says nothing.
* The **first stage** scores a passage by its lexical matches (mentions, negated or not) plus Gaussian noise
  (``first_stage_noise``): informative, fooled by negation, relevant passages spread over the top-k.
* The **teacher** (the SFT targets, like R1's rankings) reads each window of the sliding-window pass over the first
  stage, writes a templated transcript of the query words each passage mentions (``[1] apple. [2] none.
  [3] no river, apple.``, :func:`think_text`) and ranks by the number of mentions. It is
  negation-blind (with probability ``teacher_negation_blind`` per window): a ``no river`` counts as a match. Matched
  passages with equal counts come in window order (``teacher_ties="window"``) or in a random order (``"random"``,
  the demo's: a decoy tied with a relevant passage then comes first half the time). With probability
  ``teacher_swap_prob`` it also swaps an adjacent pair of its ranking. So the teacher beats the first
  stage (it removes the noise) but stays well below the oracle (decoys ranked with the relevant passages), and its
  error is systematic: SFT imitates it, while a reward on the true relevance (GRPO, ``relevant_docids`` = true
  positives) can learn to demote what the transcript itself marks with ``no``.

Records: :func:`sft_records` (Alpaca, SPEC §6) and :func:`rl_records` (the RL parquet's rows) hold the windows the
teacher saw in its sliding-window pass (the inputs an imitating reranker meets at inference), split by query into
``train`` and ``heldout``. :func:`write_files` writes everything the CLI reads; :func:`build_tokenizer` saves a
Hugging Face tokenizer (Qwen2's pre-tokenizer and byte-level BPE, Qwen2.5's chat template, ``<|im_end|>`` as eos) of
under 500 tokens that round-trips any ASCII text exactly. :func:`reference_ndcg` gives nDCG@10 of the first stage,
the teacher and the oracle (reasonrank_jax.eval). No jax here.

Defaults (500 queries, 400 train / 100 held out; 5 seeds, held out): nDCG@10 first stage 0.65, teacher 0.79, a
perfect window reranker 1.00; per window (the reward's nDCG view) input order 0.65, teacher 0.83, oracle 1.00.
Learnability (tests/test_learning.py, configs/sft_synthetic.yaml: from-scratch torch Qwen2 d64, 2 layers, 300 SFT
steps of 16 windows at lr 1e-2 on 200 queries, about 5 minutes on 2 cores): held-out loss 6.2 -> 0.37-0.41 and greedy
answers valid for 87.5-100% of held-out windows depending on the seed, but the think marks almost every passage
``none`` (the exact transcript in ~10% of windows), so the answers are mostly the identity and nDCG@10 stays at the
first stage's. Easier variants did not help at that budget (1000 queries, model seed 0): 12 topic words, 1-2 query
words, 2-4 passage words, no swaps: 91% valid (86% at d128); the same with padding only from filler words (a local
change of the generator) and no ``no Y`` of other words, so every topic word of a passage is a query word: 84%.
Mention detection (finding passage [i]'s words from the think) is what is not learnt in 300 steps. ``by_word``
reasoning learnt the format more slowly (no valid answer at 400 steps). Splitting the lookup into a copy of the
passage and a match (``copy_match``, responses ~130 tokens, every example padded to 512) did not help either: the
held-out loss plateaus at ~1.4 from step ~25 (the copy is not learnt), the copied text is never right (the think
repeats one frequent unit, ``[1] no garden no garden: none.``) and the answers get worse: same setting, model seed 0,
valid / held-out loss / nDCG@10 ours, first stage, teacher: task seed 0 50% / 1.42 / 0.584, 0.649, 0.756 (377 s of
training on 2 busy cores); task seed 1 7.5% / 1.41 / 0.544, 0.608, 0.758 (493 s); task seed 0 with 600 steps of 8
windows 19% / 1.37 / 0.613 (463 s); ``copy_topic_match`` (the copy without filler words, responses ~120 tokens),
task seed 0: 11% / 1.19 / 0.578 (211 s), the think again ``[1] no garden: none.`` for every passage.

Why (found for the demo, issue 17): those models were drawn as transformers draws weights, N(0, 0.02), which suits a
width of ~1000; at width 64 it keeps the attention logits near zero, and a 2-layer model then did not learn even to
copy the query word into its think in 150-300 steps (also in a PyTorch reference). With linen's N(0, 1/fan_in)
(reasonrank_jax/pipeline/model.py) and lr 3e-3 it does, and on the demo's variant of this task (one query word,
one-word passages, windows of 4 over the top 12; reasonrank_jax/pipeline/config.py) 600 SFT steps reach held-out
nDCG@10 0.83 against the teacher's 0.84 and the first stage's 0.69. The learning tests above still use N(0, 0.02).
A teacher blind in only some windows (``teacher_negation_blind`` 0.75 or 0.5, to give GRPO a behaviour to make
consistent) made the SFT model's answers stop following its think at that budget (benchmarks/README.md, "The
demo's GRPO margin"). What gives GRPO its margin in the demo is ``teacher_ties="random"``: the SFT model then
samples both orders of a tied decoy and relevant passage, and the reward (true relevance) tells GRPO which is right.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
import tempfile
from typing import Callable, Iterable, Sequence

import numpy as np

DATASET = "synthetic"
SPLITS = ("train", "heldout")

TOPIC_WORDS = (
    "apple", "river", "stone", "cloud", "forest", "garden", "engine", "bridge", "candle", "desert",
    "island", "castle", "market", "violin", "planet", "rocket", "tiger", "whale", "copper", "silver",
    "harbor", "meadow", "glacier", "lantern", "pepper", "orchid", "falcon", "canyon", "ribbon", "mirror",
    "anchor", "velvet", "cotton", "marble", "pillow", "tunnel", "basket", "saddle", "spider", "turtle",
)
FILLER_WORDS = ("the", "a", "of", "and", "with", "on", "in", "near", "old", "big", "small", "red")
NEGATION = "no"
NO_MENTION = "none"
THINK_STYLES = ("by_passage", "by_word", "copy_match", "copy_topic_match")
THINK_OPENER = "Matches."
TEACHER_TIES = ("window", "random")

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # the tokenizer's ids 0, 1, 2
MAX_WINDOW = 20  # SPEC: a window holds at most 20 passages

_THINK_ANSWER = re.compile(r"<think>.*?</think>\s*<answer>(.*?)</answer>", re.DOTALL)
_NON_DIGIT = re.compile(r"\D")


@dataclasses.dataclass(frozen=True)
class SyntheticTask:
    """Every knob of the task; the same task (seed included) always generates the same data.

    Ranges are inclusive ``(low, high)``. Probabilities are per passage (generation) or per window (teacher).
    """

    seed: int = 0
    num_queries: int = 500
    heldout_fraction: float = 0.2       # share of queries held out (split by query, disjoint)
    passages_per_query: int = 20        # first-stage candidates per query (all of them judged in the qrels)
    window: int = 8                     # sliding window (SPEC §2 rule), back to front
    step: int = 4
    num_topic_words: int = 40           # topic words used (a prefix of TOPIC_WORDS, 4..40)
    query_words: tuple[int, int] = (2, 3)
    passage_words: tuple[int, int] = (3, 6)
    num_relevant: tuple[int, int] = (2, 5)   # passages with >= 1 un-negated query word, per query
    num_decoys: tuple[int, int] = (2, 5)     # passages with only negated query words, per query
    p_more_words: float = 0.35          # chance a relevant passage mentions one more query word (repeated)
    p_negated_extra: float = 0.2        # chance a relevant passage also negates an unmentioned query word
    p_negated_other: float = 0.3        # chance a passage holds `no Y` for a non-query word
    first_stage_noise: float = 1.0      # std of the Gaussian noise added to the lexical match count
    teacher_negation_blind: float = 1.0  # chance per window that the teacher counts `no X` as a match
    teacher_swap_prob: float = 0.1      # chance per window that the teacher swaps an adjacent pair of its ranking
    teacher_ties: str = "window"        # order of passages with equal match counts > 0: "window" or "random"
    think_style: str = "by_passage"     # the reasoning template, one of THINK_STYLES (see think_text)
    p_other_topic: float = 0.6          # chance a padding word is a non-query topic word (else a filler word)

    def __post_init__(self):
        for name in ("query_words", "passage_words", "num_relevant", "num_decoys"):  # lists from JSON/YAML
            value = getattr(self, name)
            if not (isinstance(value, (tuple, list)) and len(value) == 2):
                raise ValueError(f"SyntheticTask: {name} must be a (low, high) pair, got {value!r}")
            object.__setattr__(self, name, (int(value[0]), int(value[1])))

        def check(ok: bool, what: str):
            if not ok:
                raise ValueError(f"SyntheticTask: {what}")

        check(self.num_queries >= 2, "num_queries must be >= 2")
        check(0.0 < self.heldout_fraction < 1.0, "heldout_fraction must be in (0, 1)")
        check(1 <= self.window <= MAX_WINDOW, f"window must be in 1..{MAX_WINDOW}")
        check(1 <= self.step <= self.window, "step must be in 1..window")
        check(4 <= self.num_topic_words <= len(TOPIC_WORDS), f"num_topic_words must be in 4..{len(TOPIC_WORDS)}")
        for name in ("query_words", "passage_words", "num_relevant", "num_decoys"):
            low, high = getattr(self, name)
            check(0 <= low <= high, f"{name} must be (low, high) with 0 <= low <= high")
        check(self.query_words[0] >= 1 and self.query_words[1] <= self.num_topic_words - 2,
              "query_words must be in 1..num_topic_words-2")
        check(self.passage_words[0] >= 1, "passage_words must be >= 1")
        check(self.num_relevant[1] + self.num_decoys[1] <= self.passages_per_query,
              "num_relevant + num_decoys may not exceed passages_per_query")
        check(self.num_relevant[0] >= 1, "every query needs a relevant passage (num_relevant low >= 1)")
        for name in ("p_more_words", "p_negated_extra", "p_negated_other", "teacher_negation_blind",
                     "teacher_swap_prob", "p_other_topic"):
            check(0.0 <= getattr(self, name) <= 1.0, f"{name} must be in [0, 1]")
        check(self.first_stage_noise >= 0.0, "first_stage_noise must be >= 0")
        check(self.think_style in THINK_STYLES, f"think_style must be one of {', '.join(THINK_STYLES)}")
        check(self.teacher_ties in TEACHER_TIES, f"teacher_ties must be one of {', '.join(TEACHER_TIES)}")

    @property
    def topic_words(self) -> tuple[str, ...]:
        return TOPIC_WORDS[:self.num_topic_words]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---- generation ----

@dataclasses.dataclass(frozen=True)
class Passage:
    docid: str
    units: tuple[str, ...]        # words and "no X" negations, in order
    query_mentions: tuple[str, ...]  # the query words it mentions, in order: "apple" or "no river"
    grade: int                    # true relevance: un-negated query words
    lexical: int                  # what a lexical matcher sees: query words, negated or not

    @property
    def text(self) -> str:
        return " ".join(self.units)


@dataclasses.dataclass(frozen=True)
class TeacherWindow:
    start: int
    end: int
    initial_list: tuple[str, ...]  # the window's docids in the order the teacher saw them
    final_list: tuple[str, ...]    # the teacher's ranking of them
    reasoning: str                 # the think text


@dataclasses.dataclass(frozen=True)
class SyntheticQuery:
    qid: str
    words: tuple[str, ...]
    passages: dict[str, Passage]
    first_stage: tuple[str, ...]         # candidate docids, best first
    first_stage_scores: tuple[float, ...]  # strictly descending
    teacher_windows: tuple[TeacherWindow, ...]
    teacher_final: tuple[str, ...]       # the candidates after the teacher's sliding-window pass

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def grades(self) -> dict[str, int]:
        return {d: p.grade for d, p in self.passages.items()}


@dataclasses.dataclass(frozen=True)
class SyntheticData:
    task: SyntheticTask
    queries: tuple[SyntheticQuery, ...]
    splits: dict[str, tuple[str, ...]]  # split -> qids (sorted)

    def query(self, qid: str) -> SyntheticQuery:
        return self._by_qid[qid]

    @functools.cached_property
    def _by_qid(self) -> dict[str, SyntheticQuery]:
        return {q.qid: q for q in self.queries}

    def split_queries(self, split: str) -> list[SyntheticQuery]:
        return [self.query(qid) for qid in split_qids(self, split)]


def split_qids(data: SyntheticData, split: str) -> tuple[str, ...]:
    if split == "all":
        return tuple(q.qid for q in data.queries)
    if split not in data.splits:
        raise ValueError(f"unknown split {split!r} (known: {', '.join(SPLITS)}, all)")
    return data.splits[split]


def _pick(rng: np.random.Generator, pool: Sequence[str], k: int) -> list[str]:
    return [pool[i] for i in rng.choice(len(pool), size=k, replace=False)] if k else []


def _some(rng: np.random.Generator, pool: list[str], p_more: float) -> list[str]:
    """One word of pool, then one more with probability p_more, repeated while any are left."""
    k = 1
    while k < len(pool) and rng.random() < p_more:
        k += 1
    return _pick(rng, pool, k)


def _make_passage(task: SyntheticTask, rng: np.random.Generator, docid: str, query: tuple[str, ...],
                  kind: str) -> Passage:
    others = [w for w in task.topic_words if w not in query]
    positive, negated = [], []
    if kind == "relevant":
        positive = _some(rng, list(query), task.p_more_words)
        rest = [w for w in query if w not in positive]
        if rest and rng.random() < task.p_negated_extra:
            negated = _pick(rng, rest, 1)
    elif kind == "decoy":
        negated = _some(rng, list(query), task.p_more_words)
    units = [*positive, *(f"{NEGATION} {w}" for w in negated)]
    used = set(positive) | set(negated)
    if rng.random() < task.p_negated_other:
        word = _pick(rng, [w for w in others if w not in used], 1)[0]
        units.append(f"{NEGATION} {word}")
        used.add(word)
    length = int(rng.integers(task.passage_words[0], task.passage_words[1] + 1))
    count = sum(len(u.split()) for u in units)
    while count < length:
        pool = others if rng.random() < task.p_other_topic else list(FILLER_WORDS)
        word = pool[int(rng.integers(len(pool)))]
        if word in used:
            continue
        units.append(word)
        used.add(word)
        count += 1
    units = [units[i] for i in rng.permutation(len(units))]
    mentions = tuple(u for u in units if u.split()[-1] in query)
    grade = sum(1 for u in units if u in query)
    return Passage(docid, tuple(units), mentions, grade, len(mentions))


def think_text(query_words: Sequence[str], passages: Sequence[Passage], style: str = "by_passage") -> str:
    """The teacher's templated reasoning about one window (``passages`` in window order, ids 1..n).

    ``by_passage`` (default): for each passage, the query words it mentions, in its order, ``no`` kept:
    ``[1] apple. [2] none. [3] no river, apple.`` The answer then follows from the entries (most mentions first).
    ``by_word``: for each query word, the passages that mention it, ``no`` marking a negated mention:
    ``Matches. apple: [1], [5], no [7]. river: [5].`` (``none`` when no passage mentions it); the opening word makes
    every query word follow a space, so it is the same token as in the passages. Shorter, but the answer has to
    merge the lists: tiny models learn the format more slowly with it (see the module docstring).
    ``copy_match``: the lookup in two 1-hop steps, first a copy of passage [i]'s text, then the query words among the
    copied ones (as ``by_passage``): ``[1] apple stone: apple. [2] the cloud: none. [3] no river apple: no river,
    apple.`` ``copy_topic_match``: the same with the filler words left out of the copy (``[2] cloud: none.``).
    Responses are about 130 (120) tokens instead of 85.
    """
    if style == "by_word":
        parts = []
        for word in query_words:
            hits = [f"{NEGATION} [{i}]" if unit == f"{NEGATION} {word}" else f"[{i}]"
                    for i, p in enumerate(passages, start=1) for unit in p.units
                    if unit in (word, f"{NEGATION} {word}")]
            parts.append(f"{word}: {', '.join(hits) or NO_MENTION}.")
        return " ".join([THINK_OPENER, *parts])
    if style == "by_passage":
        return " ".join(f"[{i}] {', '.join(p.query_mentions) or NO_MENTION}." for i, p in enumerate(passages, start=1))
    if style in ("copy_match", "copy_topic_match"):
        keep = (lambda u: u not in FILLER_WORDS) if style == "copy_topic_match" else (lambda u: True)
        return " ".join(f"[{i}] {' '.join(filter(keep, p.units))}: {', '.join(p.query_mentions) or NO_MENTION}."
                        for i, p in enumerate(passages, start=1))
    raise ValueError(f"unknown think style {style!r} (known: {', '.join(THINK_STYLES)})")


def _teacher_window(task: SyntheticTask, rng: np.random.Generator, query: tuple[str, ...],
                    passages: dict[str, Passage], docids: list[str]) -> tuple[list[int], str]:
    """(0-based ranking of the window, think text)."""
    blind = rng.random() < task.teacher_negation_blind
    counts = [passages[d].lexical if blind else passages[d].grade for d in docids]
    # "random": matched passages that tie are ranked in a random order (unmatched ones stay in window order), so
    # a decoy tied with a relevant passage comes first half the time; "window" draws nothing (the data stay the same)
    tiebreak = rng.permutation(len(docids)) if task.teacher_ties == "random" else range(len(docids))
    order = sorted(range(len(docids)), key=lambda i: (-counts[i], tiebreak[i] if counts[i] > 0 else i))
    matched = sum(1 for c in counts if c > 0)
    if rng.random() < task.teacher_swap_prob and len(docids) > 1:
        i = int(rng.integers(max(1, min(matched, len(docids) - 1))))
        order[i], order[i + 1] = order[i + 1], order[i]
    return order, think_text(query, [passages[d] for d in docids], task.think_style)


def _windows(num: int, window: int, step: int) -> list[tuple[int, int]]:
    from reasonrank_jax.inference.windows import sliding_windows

    return sliding_windows(0, num, min(window, num), step) if num else []


def _make_query(task: SyntheticTask, index: int) -> SyntheticQuery:
    rng = np.random.default_rng([task.seed, index])
    qid = f"q{index:05d}"
    query = tuple(_pick(rng, task.topic_words, int(rng.integers(task.query_words[0], task.query_words[1] + 1))))
    n = task.passages_per_query
    n_rel = int(rng.integers(task.num_relevant[0], task.num_relevant[1] + 1))
    n_decoy = int(rng.integers(task.num_decoys[0], task.num_decoys[1] + 1))
    kinds = ["relevant"] * n_rel + ["decoy"] * n_decoy + ["other"] * (n - n_rel - n_decoy)
    kinds = [kinds[i] for i in rng.permutation(n)]
    passages = {}
    for j, kind in enumerate(kinds):
        docid = f"{qid}_d{j:02d}"
        passages[docid] = _make_passage(task, rng, docid, query, kind)
    docids = list(passages)
    scores = np.array([passages[d].lexical for d in docids], float) + task.first_stage_noise * rng.standard_normal(n)
    scores = np.round(scores, 4)
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    first_stage = [docids[i] for i in order]
    fs_scores, last = [], None
    for i in order:  # strictly descending after rounding, so the written run keeps this order
        s = float(scores[i]) if last is None else min(float(scores[i]), round(last - 1e-4, 4))
        fs_scores.append(s)
        last = s
    teacher_rng = np.random.default_rng([task.seed, index, 1])
    current = list(first_stage)
    windows = []
    for start, end in _windows(n, task.window, task.step):
        ids = current[start:end]
        perm, reasoning = _teacher_window(task, teacher_rng, query, passages, ids)
        ranked = [ids[i] for i in perm]
        windows.append(TeacherWindow(start, end, tuple(ids), tuple(ranked), reasoning))
        current[start:end] = ranked
    return SyntheticQuery(qid, query, passages, tuple(first_stage), tuple(fs_scores), tuple(windows),
                          tuple(current))


@functools.lru_cache(maxsize=8)
def generate(task: SyntheticTask) -> SyntheticData:
    """All of the task's data (cached per task). Query i depends only on (seed, i): more queries extend the set."""
    queries = tuple(_make_query(task, i) for i in range(task.num_queries))
    num_heldout = min(task.num_queries - 1, max(1, int(round(task.heldout_fraction * task.num_queries))))
    perm = np.random.default_rng([task.seed, 2**31 - 1]).permutation(task.num_queries)
    heldout = {queries[i].qid for i in perm[:num_heldout]}
    splits = {"train": tuple(q.qid for q in queries if q.qid not in heldout),
              "heldout": tuple(q.qid for q in queries if q.qid in heldout)}
    return SyntheticData(task, queries, splits)


def make_corpus(task: SyntheticTask) -> tuple[dict[str, str], dict[str, dict[str, str]],
                                              dict[str, dict[str, int]], dict[str, list[str]]]:
    """(queries {qid: text}, corpus {docid: {"title", "text"}}, qrels {qid: {docid: grade}} with every candidate
    judged (0 = not relevant), first-stage run {qid: [docid, ...] best first}), over all queries."""
    data = generate(task)
    queries = {q.qid: q.text for q in data.queries}
    corpus = {d: {"title": "", "text": p.text} for q in data.queries for d, p in q.passages.items()}
    qrels = {q.qid: q.grades for q in data.queries}
    run = {q.qid: list(q.first_stage) for q in data.queries}
    return queries, corpus, qrels, run


# ---- prompts and records ----

class _IdentityTokenizer:
    """Stands in for the task's tokenizer inside the prompt builder: that tokenizer round-trips every text of the task
    exactly and passages are far below any max_passage_length, so its `tokenize` -> `convert_tokens_to_string` is the
    identity there (tests check the prompts against the real tokenizer's)."""

    def tokenize(self, text: str) -> list[str]:
        return [text]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return "".join(tokens)


def _messages(tokenizer, query: SyntheticQuery, docids: Sequence[str], mode: str) -> list[dict]:
    from reasonrank_jax.text.prompts import build_messages

    passages = [{"docid": d, "text": query.passages[d].text} for d in docids]
    return build_messages(tokenizer or _IdentityTokenizer(), query.text, passages, mode=mode)


def _label(window: TeacherWindow) -> str:
    from reasonrank_jax.data.convert import ranking_label

    return ranking_label(list(window.initial_list), list(window.final_list))


def _relevant(query: SyntheticQuery, docids: Iterable[str]) -> list[str]:
    """The window's truly relevant docids, by grade then window order."""
    docids = list(docids)
    return sorted((d for d in docids if query.passages[d].grade > 0),
                  key=lambda d: (-query.passages[d].grade, docids.index(d)))


def sft_records(task: SyntheticTask, split: str = "train", tokenizer=None,
                mode: str = "rank_GPT_reasoning") -> list[dict]:
    """Alpaca records (SPEC §6), one per window of the teacher's sliding-window pass over each query of ``split``
    (``train``, ``heldout`` or ``all``): system, instruction (the exact user prompt of
    :func:`reasonrank_jax.text.prompts.build_messages`), output
    ``<think>{reasoning}</think> <answer>{ranking}</answer>``, dataset, qid; plus window (start, end), initial_list,
    final_list and grades (true relevance of initial_list) for scoring a generated answer. ``tokenizer`` defaults to
    an exact stand-in for the task's own tokenizer."""
    from reasonrank_jax.data.convert import sft_response

    data = generate(task)
    records = []
    for query in data.split_queries(split):
        for w in query.teacher_windows:
            messages = _messages(tokenizer, query, w.initial_list, mode)
            records.append({
                "system": messages[0]["content"], "instruction": messages[1]["content"],
                "output": sft_response(w.reasoning, _label(w)), "dataset": DATASET, "qid": query.qid,
                "window": [w.start, w.end], "initial_list": list(w.initial_list), "final_list": list(w.final_list),
                "grades": [query.passages[d].grade for d in w.initial_list]})
    return records


def rl_records(task: SyntheticTask, split: str = "train", tokenizer=None, mode: str = "rank_GPT_reasoning",
               require_relevant: bool = True) -> list[dict]:
    """RL rows (the RL parquet's columns, SPEC §6): prompt (chat messages), label (the teacher's ranking,
    ``[3] > [1] > …``), initial_list, final_list (teacher), relevant_docids (the TRUE positives of the window: the
    reward scores against them), dataset, qid; plus window and grades. Windows without a relevant passage (every
    rollout would score alike) are left out unless ``require_relevant`` is False."""
    data = generate(task)
    rows = []
    for query in data.split_queries(split):
        for w in query.teacher_windows:
            relevant = _relevant(query, w.initial_list)
            if require_relevant and not relevant:
                continue
            rows.append({
                "prompt": _messages(tokenizer, query, w.initial_list, mode), "label": _label(w),
                "initial_list": list(w.initial_list), "final_list": list(w.final_list),
                "relevant_docids": relevant, "dataset": DATASET, "qid": query.qid,
                "window": [w.start, w.end], "grades": [query.passages[d].grade for d in w.initial_list]})
    return rows


def raw_rows(task: SyntheticTask, split: str = "train") -> list[dict]:
    """Rows of the raw layout (``training_data_all.jsonl``: dataset, qid, initial_list, final_list, reasoning,
    relevant_docids) for ``data build raw`` / ``data filter``; relevant_docids are the true positives."""
    data = generate(task)
    return [{"dataset": DATASET, "qid": q.qid, "initial_list": list(w.initial_list),
             "final_list": list(w.final_list), "reasoning": w.reasoning,
             "relevant_docids": _relevant(q, w.initial_list)}
            for q in data.split_queries(split) for w in q.teacher_windows]


# ---- answers and scores ----

def answer_is_valid_permutation(text: str, num: int) -> bool:
    """True when ``text`` has ``<think>…</think>`` then ``<answer>…</answer>`` (SPEC §4: DOTALL, case-sensitive)
    and the answer's numbers are 1..num, each exactly once."""
    match = _THINK_ANSWER.search(text)
    if not match:
        return False
    ids = [int(t) for t in _NON_DIGIT.sub(" ", match.group(1)).split()]
    return len(ids) == num and sorted(ids) == list(range(1, num + 1))


def _ndcg10(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> float:
    from reasonrank_jax.eval.metrics import aggregate, evaluate

    return aggregate(evaluate(run, qrels, ["ndcg_cut.10"]), ["ndcg_cut.10"])["ndcg_cut_10"]


def _as_run(ranked: Sequence[str]) -> dict[str, float]:
    return {d: float(len(ranked) - r) for r, d in enumerate(ranked)}


def window_ndcg(text_or_perm, initial_list: Sequence[str], grades: Sequence[int]) -> float:
    """nDCG@10 (graded, trec_eval semantics) of one window's ranking against the true relevance: ``text_or_perm`` is
    a model output (parsed as at inference, SPEC §2) or a 0-based permutation. 0 when the window has no relevant
    passage."""
    from reasonrank_jax.text.parsing import parse_permutation

    perm = parse_permutation(text_or_perm, len(initial_list)) if isinstance(text_or_perm, str) else text_or_perm
    qrels = {"w": {d: int(g) for d, g in zip(initial_list, grades)}}
    if not any(g > 0 for g in grades):
        return 0.0
    return _ndcg10({"w": _as_run([initial_list[i] for i in perm])}, qrels)


WindowRanker = Callable[[str, str, list[str]], list[int]]  # (qid, query text, window docids) -> 0-based permutation


def simulate_rerank(task: SyntheticTask, split: str, rank_window: WindowRanker) -> dict[str, dict[str, float]]:
    """The sliding-window rerank (SPEC §2 windows, ``task.window``/``task.step``) of the first stage with any window
    ranker; returns a run {qid: {docid: score}} (scores n - rank) for reasonrank_jax.eval."""
    data = generate(task)
    run = {}
    for q in data.split_queries(split):
        order = list(q.first_stage)
        for start, end in _windows(len(order), task.window, task.step):
            ids = order[start:end]
            perm = list(rank_window(q.qid, q.text, list(ids)))
            order[start:end] = [ids[i] for i in perm]
        run[q.qid] = _as_run(order)
    return run


def reference_ndcg(task: SyntheticTask, split: str = "heldout") -> dict[str, float]:
    """Mean nDCG@10 (reasonrank_jax.eval, graded qrels) over the queries of ``split``:

    * ``first_stage``: the first-stage run;
    * ``teacher``: the teacher's sliding-window pass (the rankings SFT imitates);
    * ``oracle_windows``: the same pass with a perfect window ranker (true grade; the best a window reranker does);
    * ``oracle``: the ideal ranking of all candidates (1.0: every relevant passage is a candidate);
    * ``teacher_window``, ``first_stage_window``, ``oracle_window``: per-window nDCG@10 of the teacher's label, of
      the window's input order and of the perfect order, averaged over the teacher's windows that hold a relevant
      passage (what the GRPO reward's nDCG view sees).
    """
    data = generate(task)
    queries = data.split_queries(split)
    _, _, qrels, _ = make_corpus(task)
    qrels = {q.qid: qrels[q.qid] for q in queries}
    out = {
        "first_stage": _ndcg10({q.qid: _as_run(q.first_stage) for q in queries}, qrels),
        "teacher": _ndcg10({q.qid: _as_run(q.teacher_final) for q in queries}, qrels),
        "oracle_windows": _ndcg10(simulate_rerank(task, split, _oracle_ranker(data)), qrels),
        "oracle": _ndcg10({q.qid: _as_run(sorted(q.first_stage, key=lambda d: -q.passages[d].grade))
                           for q in queries}, qrels),
    }
    per_window = {"teacher_window": [], "first_stage_window": [], "oracle_window": []}
    for q in queries:
        for w in q.teacher_windows:
            grades = [q.passages[d].grade for d in w.initial_list]
            if not any(grades):
                continue
            n = len(grades)
            pos = {d: i for i, d in enumerate(w.initial_list)}
            per_window["teacher_window"].append(window_ndcg([pos[d] for d in w.final_list], w.initial_list, grades))
            per_window["first_stage_window"].append(window_ndcg(list(range(n)), w.initial_list, grades))
            per_window["oracle_window"].append(window_ndcg(sorted(range(n), key=lambda i: (-grades[i], i)),
                                                           w.initial_list, grades))
    out.update({k: float(np.mean(v)) if v else float("nan") for k, v in per_window.items()})
    out["num_queries"] = len(queries)
    return out


def _oracle_ranker(data: SyntheticData) -> WindowRanker:
    def rank(qid: str, _query: str, docids: list[str]) -> list[int]:
        passages = data.query(qid).passages
        return sorted(range(len(docids)), key=lambda i: (-passages[docids[i]].grade, i))
    return rank


# ---- tokenizer ----
#
# A Qwen2-style byte-level BPE with a vocabulary of under 500 tokens. Why not a word-level one: transformers 5 loads
# any tokenizer that sits next to a `model_type: qwen2` config.json as `Qwen2Tokenizer`, which rebuilds the backend
# from tokenizer.json's vocab and merges with Qwen2's own normaliser (NFC), pre-tokenizer (Qwen2's split pattern, then
# byte-level) and byte-level decoder. This tokenizer is built with exactly those parts, so it encodes and decodes the
# same whether it is loaded alone (TokenizersBackend) or from an exported Qwen2 checkpoint directory (Qwen2Tokenizer).
# As with Qwen2.5, digits are single tokens ("[12]" -> "[", "1", "2", "]"); every word of the task is one token.

TOKENIZER_MAX_VOCAB = 496          # special tokens + byte alphabet + merges
_ALPHABET_BYTES = tuple(range(32, 127)) + (9, 10, 13)  # printable ASCII, tab, newline, carriage return


def _qwen2_backend(vocab: dict[str, int], merges: list[tuple[str, str]]):
    """The backend exactly as transformers' Qwen2Tokenizer builds it from a vocab and merges."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    from reasonrank_jax.text.tokenizer import QWEN2_PRETOKENIZE_PATTERN

    backend = Tokenizer(BPE(vocab, merges, dropout=None, unk_token=None, continuing_subword_prefix="",
                            end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return backend


def _byte_symbols() -> dict[int, str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return bytes_to_unicode()


def _chatml(messages: list[dict], response: str | None = None) -> str:
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + "<|im_start|>assistant\n" + (f"{response}<|im_end|>\n" if response is not None else "")


def _canonical_texts() -> list[str]:
    """The texts the merges are learnt from: a fixed task's SFT records (rendered as the chat template renders them)
    and the protocol's fixed texts in every prompt mode — the same for every task, so one tokenizer serves all."""
    from reasonrank_jax.text.prompts import MODES, build_messages

    texts = []
    for style in THINK_STYLES:
        for r in sft_records(SyntheticTask(seed=0, num_queries=100, think_style=style), "all"):
            messages = [{"role": "system", "content": r["system"]}, {"role": "user", "content": r["instruction"]}]
            texts.append(_chatml(messages, r["output"]))
    passages = [{"text": "apple river"}, {"title": "stone", "text": "no cloud"}]
    for mode in MODES:
        texts.append(_chatml(build_messages(_IdentityTokenizer(), "apple river", passages, mode=mode)))
    return texts


def _learn_merges(counts: dict[tuple[str, ...], int], num_merges: int) -> list[tuple[str, str]]:
    """Plain BPE on weighted symbol sequences; ties broken by the pair itself, so the result is deterministic."""
    words = dict(counts)
    merges: list[tuple[str, str]] = []
    while len(merges) < num_merges:
        pairs: dict[tuple[str, str], int] = {}
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] = pairs.get(pair, 0) + count
        pairs = {p: c for p, c in pairs.items() if c > 0}
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged: dict[tuple[str, ...], int] = {}
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + count
        words = merged
    return merges


def _special_split(text: str) -> list[str]:
    return [p for p in re.split("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")", text)
            if p and p not in SPECIAL_TOKENS]


@functools.lru_cache(maxsize=4)
def _tokenizer_model(extra_texts: tuple[str, ...] = ()) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges): special tokens (ids 0-2), the byte alphabet, then the merges learnt from the canonical texts,
    with every task word (after a space, as it occurs) weighted up so that each is one token."""
    symbols = _byte_symbols()
    alphabet = sorted(symbols[b] for b in _ALPHABET_BYTES)
    pre = _qwen2_backend({s: i for i, s in enumerate(alphabet)}, []).pre_tokenizer
    known = set(alphabet)
    counts: dict[tuple[str, ...], int] = {}

    def add(text: str, weight: int = 1):
        for part in _special_split(text):
            for piece, _ in pre.pre_tokenize_str(part):
                key = tuple(c for c in piece if c in known)
                counts[key] = counts.get(key, 0) + weight

    for text in (*_canonical_texts(), *extra_texts):
        add(text)
    for word in (*TOPIC_WORDS, *FILLER_WORDS, NEGATION, NO_MENTION):
        add(" " + word, 100_000)
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for s in alphabet:
        vocab[s] = len(vocab)
    merges = _learn_merges(counts, TOKENIZER_MAX_VOCAB - len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return vocab, merges


def tokenizer_vocab() -> dict[str, int]:
    """The tokenizer's vocabulary (token -> id; byte-level symbols, e.g. "Ġapple" for " apple")."""
    return dict(_tokenizer_model()[0])


def build_tokenizer(task_or_texts: SyntheticTask | Iterable[str] | None, out_dir: str | os.PathLike) -> str:
    """Save the task's tokenizer in ``out_dir`` (replaced atomically); return the directory.

    A Qwen2-style byte-level BPE (Qwen2's normaliser, split pattern and byte-level decoder; see the comment above)
    with ``<|endoftext|>`` (id 0, pad), ``<|im_start|>`` (1) and ``<|im_end|>`` (2, eos) as special tokens, the
    printable-ASCII byte alphabet and merges learnt from the task's texts: < 500 tokens, every task word one token,
    decode(encode(x)) == x for any ASCII text (other characters are dropped), the Qwen2.5 chat template.
    ``transformers.AutoTokenizer.from_pretrained(out_dir)`` loads it offline, also next to a Qwen2 config.json.
    ``task_or_texts``: a task or None (the tokenizer is the same for every task: the word lists and the protocol
    decide it), or extra texts whose pieces are added to the texts the merges are learnt from.
    """
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    from reasonrank_jax.text.tokenizer import QWEN25_CHAT_TEMPLATE

    extra = () if task_or_texts is None or isinstance(task_or_texts, SyntheticTask) else tuple(task_or_texts)
    vocab, merges = _tokenizer_model(extra)
    backend = _qwen2_backend(vocab, merges)
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"], chat_template=QWEN25_CHAT_TEMPLATE, model_max_length=4096,
        clean_up_tokenization_spaces=False)
    out = os.fspath(out_dir)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tokenizer-", dir=parent)
    try:
        tokenizer.save_pretrained(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        for name in os.listdir(tmp):
            os.chmod(os.path.join(tmp, name), 0o666 & ~_umask())
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _replace_dir(src: str, dst: str) -> None:
    """Move directory src to dst, replacing dst (an old dst is moved aside first, then removed)."""
    if os.path.isdir(dst):
        old = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(os.path.abspath(dst)))
        os.rmdir(old)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def token_lengths(task: SyntheticTask, tokenizer, split: str = "train") -> dict[str, dict[str, float]]:
    """Token lengths of the SFT records (prompt = chat template with generation prompt; response = the rendered answer
    with its <|im_end|> and newline, as :func:`reasonrank_jax.data.stream.tokenize_sft` counts them)."""
    from reasonrank_jax.data.stream import tokenize_sft

    prompt, total = [], []
    for r in sft_records(task, split, tokenizer):
        ids, prompt_length, _ = tokenize_sft(tokenizer, r["system"], r["instruction"], r["output"], 1 << 20)
        prompt.append(prompt_length)
        total.append(len(ids))
    prompt_n, total_n = np.asarray(prompt), np.asarray(total)

    def stats(x):
        return {"mean": float(x.mean()), "max": int(x.max()), "min": int(x.min()), "p95": float(np.percentile(x, 95))}
    return {"prompt": stats(prompt_n), "response": stats(total_n - prompt_n), "total": stats(total_n),
            "count": len(total)}


# ---- files ----

def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: str, write: Callable[[str], None]) -> None:
    """write(tmp) into a temporary file next to path, then os.replace it onto path."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    _atomic_write(path, write)


def _jsonl(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _write_parquet(path: str, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    _atomic_write(path, lambda tmp: pq.write_table(pa.Table.from_pylist(rows), tmp))


def write_files(task: SyntheticTask, out_dir: str | os.PathLike, tokenizer: bool = True) -> dict[str, str]:
    """Write the task's files into ``out_dir``, each atomically; return {name: path}:

    * ``queries.jsonl`` (``qid``, ``query``), ``corpus.jsonl`` (``docid``, ``title`` = "", ``text``): all queries;
    * ``qrels.trec`` (``qid 0 docid grade``, every candidate judged);
    * ``first_stage.trec`` (all queries), ``first_stage_train.trec``, ``first_stage_heldout.trec``: TREC runs with
      the first-stage scores (``rerank --run``);
    * ``teacher_heldout.trec``: the teacher's sliding-window pass over the held-out queries;
    * ``sft_train.json``, ``sft_heldout.json``: Alpaca lists (``data build sft --file sft_train.json``);
    * ``rl_train.parquet``: RL rows (``data build rl``);
    * ``raw/training_data_all.jsonl`` with ``raw/id_query/synthetic.jsonl`` and ``raw/id_doc/synthetic.jsonl``
      (train queries; ``data build raw``, ``data filter``);
    * ``task.json``: the task's parameters and :func:`reference_ndcg` of both splits;
    * ``tokenizer/`` (:func:`build_tokenizer`) unless ``tokenizer`` is False.
    """
    from reasonrank_jax.eval.trec import write_qrels, write_run

    out = os.fspath(out_dir)
    os.makedirs(out, exist_ok=True)
    data = generate(task)
    queries, corpus, qrels, _ = make_corpus(task)
    paths: dict[str, str] = {}

    def path(name: str) -> str:
        paths[name] = os.path.join(out, name)
        return paths[name]

    _write_text(path("queries.jsonl"), _jsonl({"qid": q, "query": t} for q, t in queries.items()))
    _write_text(path("corpus.jsonl"), _jsonl({"docid": d, **doc} for d, doc in corpus.items()))
    _atomic_write(path("qrels.trec"), lambda tmp: write_qrels(tmp, qrels))
    fs = {q.qid: dict(zip(q.first_stage, q.first_stage_scores)) for q in data.queries}
    _atomic_write(path("first_stage.trec"), lambda tmp: write_run(tmp, fs, tag="synthetic_first_stage"))
    for split in SPLITS:
        qids = split_qids(data, split)
        _atomic_write(path(f"first_stage_{split}.trec"),
                      lambda tmp, qids=qids: write_run(tmp, {q: fs[q] for q in qids}, tag="synthetic_first_stage"))
    teacher = {q.qid: _as_run(q.teacher_final) for q in data.split_queries("heldout")}
    _atomic_write(path("teacher_heldout.trec"), lambda tmp: write_run(tmp, teacher, tag="synthetic_teacher"))
    for split in SPLITS:
        records = sft_records(task, split)
        _write_text(path(f"sft_{split}.json"), json.dumps(records, ensure_ascii=False, indent=1) + "\n")
    _write_parquet(path("rl_train.parquet"), rl_records(task, "train"))
    train = set(split_qids(data, "train"))
    _write_text(path("raw/training_data_all.jsonl"), _jsonl(raw_rows(task, "train")))
    _write_text(path("raw/id_query/synthetic.jsonl"),
                _jsonl({"qid": q, "query": t} for q, t in queries.items() if q in train))
    _write_text(path("raw/id_doc/synthetic.jsonl"),
                _jsonl({"docid": d, **corpus[d]} for q in data.split_queries("train") for d in q.passages))
    meta = {"task": task.to_dict(), "dataset": DATASET,
            "splits": {s: len(split_qids(data, s)) for s in SPLITS},
            "reference_ndcg": {s: reference_ndcg(task, s) for s in SPLITS}}
    _write_text(path("task.json"), json.dumps(meta, indent=1) + "\n")
    if tokenizer:
        paths["tokenizer"] = build_tokenizer(task, os.path.join(out, "tokenizer"))
    return paths
