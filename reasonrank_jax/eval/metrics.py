"""Retrieval metrics with trec_eval semantics (as pytrec_eval computes them), in numpy.

Semantics, each checked against pytrec_eval in tests/test_eval_metrics.py:
- A query is ranked by score descending, ties broken by docid descending (trec_eval sorts by
  score, then by ``strcmp`` of the docids, descending; for UTF-8 that is Python's ``str`` order).
- Only queries present in both the run and the qrels are evaluated; a query whose qrels are empty
  is skipped; a query in the qrels whose run is empty is evaluated (every measure is 0).
- A document is relevant when its qrels relevance is >= 1 (trec_eval's default relevance level),
  for P, recall, map, recip_rank and mrr. nDCG uses the relevance itself as the gain; unjudged
  documents and relevances <= 0 have gain 0. The ideal ranking is built from all judged documents
  of the query, retrieved or not.
- P_k divides by k even when fewer than k documents were retrieved; recall, map are 0 for a query
  without relevant documents; so is nDCG when the ideal DCG is 0. No truncation at 1000 documents.

Measure names are pytrec_eval's: ``ndcg_cut_10``, ``P_5``, ``recall_100``, ``map``, ``recip_rank``,
``ndcg`` (uncut). One measure is ours: ``mrr_10`` is MRR@10, the reciprocal rank of the first
relevant document if it lies within the top 10, else 0 (trec_eval's ``recip_rank`` has no cutoff).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import numpy as np

from reasonrank_jax.errors import InputError

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

# trec_eval's default cutoffs for the parameterised measures (m_ndcg_cut.c, m_P.c, m_recall.c).
DEFAULT_CUTOFFS = (5, 10, 15, 20, 30, 100, 200, 500, 1000)
CUTOFF_FAMILIES = {"ndcg_cut": DEFAULT_CUTOFFS, "P": DEFAULT_CUTOFFS, "recall": DEFAULT_CUTOFFS,
                   "mrr": (10,)}
PLAIN_MEASURES = ("map", "recip_rank", "ndcg")
RELEVANCE_LEVEL = 1

# Friendly spellings (matched case-insensitively) -> family.
_ALIASES = {"ndcg_cut": "ndcg_cut", "ndcg": "ndcg_cut", "p": "P", "precision": "P",
            "recall": "recall", "r": "recall", "mrr": "mrr", "map": "map",
            "recip_rank": "recip_rank", "mrr_cut": "mrr"}
_NAME_RE = re.compile(r"^(?P<family>[A-Za-z_]+?)(?:[._@](?P<cutoffs>\d+(?:,\d+)*))?$")


def parse_metrics(names: Iterable[str]) -> list[str]:
    """Expand metric names to canonical pytrec_eval-style names, in order, without duplicates.

    Accepts a trec_eval family (``ndcg_cut`` -> its default cutoffs), a dotted or underscored
    cutoff (``ndcg_cut.10``, ``ndcg_cut_10``, ``ndcg_cut.1,5,10``), ``@`` forms (``ndcg@10``,
    ``recall@100``, ``mrr@10``, ``P@5``), and the plain ``map``, ``recip_rank``, ``ndcg``.
    Items are also split on commas and whitespace, a bare number continuing the previous family
    (``ndcg_cut.1,5,recall.100``).
    """
    canonical: list[str] = []
    family = None
    for item in names:
        for token in filter(None, re.split(r"[,\s]+", str(item))):
            if token.isdigit():
                if family is None or family not in CUTOFF_FAMILIES:
                    raise InputError(f"cutoff {token!r} does not follow a measure with cutoffs",
                                     field="metrics")
                canonical.append(f"{family}_{int(token)}")
                continue
            family, cutoffs = _parse_one(token)
            if cutoffs is None:
                canonical.extend(f"{family}_{k}" for k in CUTOFF_FAMILIES[family])
            elif cutoffs == ():
                canonical.append(family)
            else:
                canonical.extend(f"{family}_{k}" for k in cutoffs)
    return list(dict.fromkeys(canonical))


def _parse_one(token: str) -> tuple[str, tuple[int, ...] | None]:
    """-> (family, cutoffs); cutoffs None means the family's defaults, () a measure without cutoff."""
    if token.lower() in PLAIN_MEASURES:
        return token.lower(), ()
    match = _NAME_RE.match(token)
    family = _ALIASES.get(match["family"].lower()) if match else None
    if family is None:
        known = ", ".join([*CUTOFF_FAMILIES, *PLAIN_MEASURES])
        raise InputError(f"unknown measure {token!r} (known: {known}; e.g. ndcg_cut.10, mrr@10)",
                         field="metrics")
    if family in PLAIN_MEASURES:
        if match["cutoffs"]:
            raise InputError(f"measure {family!r} takes no cutoff: {token!r}", field="metrics")
        return family, ()
    if not match["cutoffs"]:
        return family, None
    cutoffs = tuple(int(k) for k in match["cutoffs"].split(","))
    if min(cutoffs) < 1:
        raise InputError(f"cutoffs must be >= 1: {token!r}", field="metrics")
    return family, cutoffs


def dotted_name(name: str) -> str:
    """``ndcg_cut_10`` -> ``ndcg_cut.10`` (trec_eval command-line style); plain names unchanged."""
    family, _, cutoff = name.rpartition("_")
    return f"{family}.{cutoff}" if family in CUTOFF_FAMILIES and cutoff.isdigit() else name


def rank_documents(scores: Mapping[str, float]) -> list[str]:
    """Docids in trec_eval order: score descending, ties by docid descending."""
    return [docid for docid, _ in sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def evaluate(run: Run, qrels: Qrels, metrics: Iterable[str]) -> dict[str, dict[str, float]]:
    """Per-query measures for the queries in both run and (non-empty) qrels, in run order."""
    names = parse_metrics(metrics)
    results = {}
    for qid, scores in run.items():
        judged = qrels.get(qid)
        if not judged:
            continue
        results[qid] = _evaluate_query(rank_documents(scores), judged, names)
    return results


def _evaluate_query(ranked: list[str], judged: Mapping[str, int], names: list[str]) -> dict[str, float]:
    rel_n = np.array([judged.get(docid, 0) for docid in ranked], dtype=np.int64)
    gain_n = np.maximum(rel_n, 0).astype(np.float64)
    hit_n = rel_n >= RELEVANCE_LEVEL
    discount_n = 1.0 / np.log2(np.arange(2, len(ranked) + 2, dtype=np.float64))
    ideal_gain_m = np.sort(np.array([g for g in judged.values() if g > 0], dtype=np.float64))[::-1]
    ideal_discount_m = 1.0 / np.log2(np.arange(2, len(ideal_gain_m) + 2, dtype=np.float64))
    num_rel = sum(1 for g in judged.values() if g >= RELEVANCE_LEVEL)
    first_hit = int(np.argmax(hit_n)) if hit_n.any() else None

    def ndcg(cutoff: int | None) -> float:
        dcg = float(np.sum(gain_n[:cutoff] * discount_n[:cutoff]))
        ideal = float(np.sum(ideal_gain_m[:cutoff] * ideal_discount_m[:cutoff]))
        return dcg / ideal if ideal > 0 else 0.0

    values = {}
    for name in names:
        family, _, cutoff_text = name.rpartition("_")
        if name == "map":
            precision_at_hits = np.cumsum(hit_n)[hit_n] / (np.flatnonzero(hit_n) + 1.0)
            values[name] = float(np.sum(precision_at_hits)) / num_rel if num_rel else 0.0
        elif name == "recip_rank":
            values[name] = 1.0 / (first_hit + 1) if first_hit is not None else 0.0
        elif name == "ndcg":
            values[name] = ndcg(None)
        else:
            cutoff = int(cutoff_text)
            if family == "ndcg_cut":
                values[name] = ndcg(cutoff)
            elif family == "P":
                values[name] = float(np.sum(hit_n[:cutoff])) / cutoff
            elif family == "recall":
                values[name] = float(np.sum(hit_n[:cutoff])) / num_rel if num_rel else 0.0
            elif family == "mrr":
                hit = first_hit is not None and first_hit < cutoff
                values[name] = 1.0 / (first_hit + 1) if hit else 0.0
    return values


def aggregate(per_query: Mapping[str, Mapping[str, float]], metrics: Iterable[str] | None = None
              ) -> dict[str, float]:
    """Mean of each measure over the evaluated queries (NaN when there are none).

    ``metrics`` defaults to the measures of the first query.
    """
    if metrics is None:
        names = list(next(iter(per_query.values()), {}))
    else:
        names = parse_metrics(metrics)
    if not per_query:
        return {name: math.nan for name in names}
    return {name: float(np.mean([values[name] for values in per_query.values()])) for name in names}


def drop_excluded(run: Run, excluded: Mapping[str, Iterable[str]]) -> dict[str, dict[str, float]]:
    """A copy of ``run`` without each query's excluded docids (queries themselves are kept)."""
    dropped = {}
    for qid, scores in run.items():
        banned = set(excluded.get(qid, ()))
        dropped[qid] = {docid: score for docid, score in scores.items() if docid not in banned}
    return dropped
