"""Sliding-window listwise reranking (SPEC §2) over a first-stage run, with two schedules over one DecodeEngine.

- `rerank_slots` (ours): windows of one query are sequential, different queries are independent, so whenever a
  query's window finishes its answer is parsed and applied and that query's next window is submitted at once; the
  engine's slots stay full and nobody waits for the slowest trace. A free slot goes to the query with the most
  windows left, so the run does not end with one long query decoding alone.
- `rerank_barrier` (the original's schedule): window position w for every query, wait for all, then w - 1.
Both produce the same rankings (greedy decoding of a request depends only on its prompt, up to floating-point
rounding that can flip a near-tie: see engine.py).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Callable, Iterable

from reasonrank_jax.inference.windows import sliding_windows
from reasonrank_jax.text import build_prompt, parse_permutation_with_status


@dataclasses.dataclass
class QueryState:
    qid: str
    query: str
    docids: list[str]  # current order of the reranked candidates (top-`top` of the first-stage run)
    tail: list[str]  # candidates below `top`: kept in first-stage order after the reranked ones
    windows: list[tuple[int, int]]
    next_window: int = 0
    parse_failures: int = 0
    tokens_in: int = 0
    tokens_out: int = 0

    @property
    def finished(self) -> bool:
        return self.next_window >= len(self.windows)

    def final_ranking(self) -> list[str]:
        return self.docids + self.tail


def make_query_state(qid: str, query: str, ranked_docids: list[str], window: int = 20, step: int = 10,
                     top: int = 100) -> QueryState:
    top = min(top, len(ranked_docids))
    windows = sliding_windows(0, top, min(window, top), step) if top > 0 else []
    return QueryState(qid, query, list(ranked_docids[:top]), list(ranked_docids[top:]), windows)


@dataclasses.dataclass(frozen=True)
class WindowPrompter:
    """Builds a window's token ids from the corpus, and reads a window's answer back."""

    tokenizer: object
    corpus: dict[str, dict]  # docid -> {"title"?, "text"}
    mode: str = "rank_GPT_reasoning"
    max_passage_length: int = 512

    def prompt_ids(self, state: QueryState, window: tuple[int, int]) -> list[int]:
        start, end = window
        passages = [self.corpus[docid] for docid in state.docids[start:end]]
        text = build_prompt(self.tokenizer, state.query, passages, self.mode, self.max_passage_length)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)


def _apply_answer(state: QueryState, window: tuple[int, int], output: str) -> tuple[list[int], bool, list[str]]:
    start, end = window
    passage_ids = state.docids[start:end]
    perm, ok = parse_permutation_with_status(output, end - start)
    state.docids[start:end] = [passage_ids[i] for i in perm]  # positions (and their scores) stay; docids move
    state.parse_failures += not ok
    return perm, ok, passage_ids


def _finish_window(state, window, finished, prompter, on_window):
    output = prompter.decode(finished.tokens)
    perm, ok, passage_ids = _apply_answer(state, window, output)
    state.tokens_in += finished.prompt_len
    state.tokens_out += len(finished.tokens)
    state.next_window += 1
    if on_window:
        on_window({"qid": state.qid, "window": list(window), "passage_ids": passage_ids, "output": output,
                   "permutation": perm, "parse_ok": ok, "tokens_in": finished.prompt_len,
                   "tokens_out": len(finished.tokens)})


def rerank_slots(engine, states: Iterable[QueryState], prompter: WindowPrompter,
                 on_window: Callable[[dict], None] | None = None,
                 on_query_done: Callable[[QueryState], None] | None = None, max_in_flight: int | None = None):
    """Barrier-free: each query's next window is submitted as soon as its previous one finishes."""
    waiting = deque(s for s in states if not s.finished)
    in_flight: dict[str, QueryState] = {}
    limit = max_in_flight or 2 * engine.num_slots  # a few queued requests keep prefill batches full

    def submit(state):
        window = state.windows[state.next_window]
        # Most windows left first: a query's windows run one after another, so the query with the most left is the
        # one that would otherwise finish last, with the other slots idle (longest-remaining-chain-first).
        engine.submit((state.qid, state.next_window), prompter.prompt_ids(state, window),
                      priority=len(state.windows) - state.next_window)
        in_flight[state.qid] = state

    while waiting or in_flight:
        while waiting and len(in_flight) < limit:
            submit(waiting.popleft())
        for finished in engine.step():
            qid, window_index = finished.request_id
            state = in_flight.pop(qid)
            _finish_window(state, state.windows[window_index], finished, prompter, on_window)
            if state.finished:
                if on_query_done:
                    on_query_done(state)
            else:
                submit(state)


def rerank_barrier(engine, states: Iterable[QueryState], prompter: WindowPrompter,
                   on_window: Callable[[dict], None] | None = None,
                   on_query_done: Callable[[QueryState], None] | None = None):
    """The original's schedule: window position w of every query, then wait for all of them, then w + 1."""
    states = [s for s in states if not s.finished]
    by_qid = {s.qid: s for s in states}
    for position in range(max((len(s.windows) for s in states), default=0)):
        for state in states:
            if position < len(state.windows):
                engine.submit((state.qid, position), prompter.prompt_ids(state, state.windows[position]))
        while engine.has_work():
            for finished in engine.step():
                qid, window_index = finished.request_id
                state = by_qid[qid]
                _finish_window(state, state.windows[window_index], finished, prompter, on_window)
                if state.finished and on_query_done:
                    on_query_done(state)


def trec_lines(qid: str, ranking: list[str], tag: str = "reasonrank_jax") -> list[str]:
    """Every candidate once, scores strictly descending (n - rank): the first-stage scores need not be."""
    n = len(ranking)
    return [f"{qid} Q0 {docid} {rank} {n - rank + 1} {tag}" for rank, docid in enumerate(ranking, start=1)]
