"""Self-consistency filter (SPEC 6) and the deterministic splits.

A raw row is kept when its teacher ranking ``final_list``, scored as a run with descending
scores, reaches nDCG@10 >= alpha against its own mined positives ``relevant_docids`` (relevance 1
each), with trec_eval ``ndcg_cut.10`` semantics. An empty positive set scores 0 (SPEC 4).
"""

from __future__ import annotations

import hashlib
from typing import Iterable

DEFAULT_ALPHA = 0.4


def final_list_run(final_list: list[str]) -> dict[str, float]:
    """The teacher ranking as a run: descending scores, a repeated id keeps its first (best) rank."""
    run: dict[str, float] = {}
    for rank, docid in enumerate(final_list):
        run.setdefault(docid, float(len(final_list) - rank))
    return run


def self_consistency_scores(rows: Iterable[dict]) -> list[float]:
    """nDCG@10 of each row's final_list against its relevant_docids (trec_eval semantics)."""
    from reasonrank_jax.eval.metrics import evaluate

    rows = list(rows)
    run, qrels = {}, {}
    for i, row in enumerate(rows):
        if row["relevant_docids"] and row["final_list"]:
            run[str(i)] = final_list_run(row["final_list"])
            qrels[str(i)] = {d: 1 for d in row["relevant_docids"]}
    per_query = evaluate(run, qrels, ["ndcg_cut_10"]) if run else {}
    return [per_query.get(str(i), {}).get("ndcg_cut_10", 0.0) for i in range(len(rows))]


def keeps(score: float, alpha: float = DEFAULT_ALPHA) -> bool:
    return score >= alpha


def hash_unit(*keys: str) -> float:
    """A stable number in [0, 1) from strings (sha256), the same on every machine and run."""
    digest = hashlib.sha256("\x1f".join(keys).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(dataset: str, qid: str, validation_fraction: float) -> str:
    """'train' or 'validation', decided by a hash of (dataset, qid) only."""
    return "validation" if hash_unit("split", dataset, qid) < validation_fraction else "train"


def stage_of(dataset: str, qid: str, sft_fraction: float = 0.5) -> str:
    """'sft' or 'rl': the two training stages split the filtered raw set by a hash (SPEC 6)."""
    return "sft" if hash_unit("stage", dataset, qid) < sft_fraction else "rl"

