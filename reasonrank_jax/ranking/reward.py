"""The multi-view ranking reward of GRPO (SPEC §4): nDCG@10 + 0.2 · Recall@10 + 0.1 · RBO, per rollout of one window.

Strings are parsed on the host (`parse_response`) into fixed-size integer arrays; everything numeric, the validity
rules included, runs in-graph (`multiview_reward`), so a [prompts, rollouts] group is one `jit(vmap(vmap(...)))`.

Rules (SPEC §4, with the original's defects fixed as specified):
- no `<think>…</think>\\s*<answer>…</answer>` (DOTALL, case-sensitive) -> -1;
- predicted count != label count, or distinct predicted != distinct label, or any predicted id outside 1..num -> 0;
- else ids map to initial_list[id - 1]; relevance 1 for each of relevant_docids; an empty relevant set gives
  nDCG = Recall = 0; RBO is computed on the id lists (p = 1.0: average overlap, as the `rbo` package's default).
"""

from __future__ import annotations

import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from reasonrank_jax.ranking.metrics import ndcg_at_k, rank_biased_overlap, recall_at_k

MULTIVIEW_WEIGHTS = (1.0, 0.2, 0.1)  # nDCG@10, Recall@10, RBO
NDCG_ONLY_WEIGHTS = (1.0, 0.0, 0.0)  # ablation "w/o multi-view"
MAX_IDS = 20  # a window holds at most 20 passages

_THINK_ANSWER = re.compile(r"<think>.*?</think>\s*<answer>(.*?)</answer>", re.DOTALL)
_NON_DIGIT = re.compile(r"\D")


class ParsedResponse(NamedTuple):
    """One rollout as arrays of static size n = max_ids. Ids are 1-based and 0 pads; an id outside 1..n is coded
    as n + j for the j-th distinct such value (so distinct counts stay exact); the lengths mask the padding."""

    format_ok: np.ndarray  # bool []
    pred_ids: np.ndarray  # int32 [n]
    pred_len: np.ndarray  # int32 []: true count, capped at n + 1 (anything over n mismatches every label)
    label_ids: np.ndarray  # int32 [n]
    label_len: np.ndarray  # int32 []
    num: np.ndarray  # int32 []: passages in the window (len(initial_list))
    rel_by_id: np.ndarray  # float32 [n + 1]: relevance of initial_list[id - 1] at index id; index 0 unused
    num_relevant: np.ndarray  # int32 []: distinct relevant docids


def _ids(text: str) -> list[int]:
    return [int(t) for t in _NON_DIGIT.sub(" ", text).split()]


def _fit(ids: list[int], n: int) -> tuple[np.ndarray, int]:
    """Keep the first n ids, code out-of-range ones as n + 1, n + 2, ... by distinct value, pad with 0."""
    outside: dict[int, int] = {}
    kept = [i if 1 <= i <= n else n + outside.setdefault(i, len(outside) + 1) for i in ids[:n]]
    return np.asarray(kept + [0] * (n - len(kept)), np.int32), min(len(ids), n + 1)


def parse_response(response: str, label: str, initial_list: list[str], relevant_docids: list[str],
                   max_ids: int = MAX_IDS) -> ParsedResponse:
    """Host half of the reward: strings -> arrays. `max_ids` must be >= len(initial_list) and the label's count."""
    label_ids = _ids(label)
    if len(initial_list) > max_ids or len(label_ids) > max_ids:
        raise ValueError(f"window of {len(initial_list)} passages / label of {len(label_ids)} ids exceeds "
                         f"max_ids={max_ids}")
    match = _THINK_ANSWER.search(response)
    pred, pred_len = _fit(_ids(match.group(1)) if match else [], max_ids)
    label_arr, label_len = _fit(label_ids, max_ids)
    relevant = set(relevant_docids)
    rel_by_id = np.zeros(max_ids + 1, np.float32)
    for position, docid in enumerate(initial_list, start=1):
        rel_by_id[position] = float(docid in relevant)
    return ParsedResponse(np.bool_(match is not None), pred, np.int32(pred_len), label_arr, np.int32(label_len),
                          np.int32(len(initial_list)), rel_by_id, np.int32(len(relevant)))


def stack_parsed(parsed: list[ParsedResponse]) -> ParsedResponse:
    """A batch (leading axis) of parsed responses, e.g. to reshape into [prompts, rollouts] and vmap twice."""
    return ParsedResponse(*(np.stack(field) for field in zip(*parsed)))


def _distinct_count(ids_n, length, num_ids):
    present = jnp.any((ids_n[:, None] == jnp.arange(num_ids)) & (jnp.arange(ids_n.shape[0]) < length)[:, None],
                      axis=0)
    return jnp.sum(present)


def reward_views(parsed: ParsedResponse, weights=MULTIVIEW_WEIGHTS, rbo_p: float = 1.0, k: int = 10) -> dict:
    """In-graph reward of one rollout and its parts (jit- and vmap-able): "reward" (SPEC §4), "ndcg", "recall",
    "rbo" (each 0 unless the answer is a valid permutation), "format_ok" and "valid" (bools)."""
    n = parsed.pred_ids.shape[-1]
    positions = jnp.arange(n)
    pred_valid = positions < parsed.pred_len
    num_ids = 2 * n + 1  # ids 0..n plus at most n coded out-of-range values
    same_count = parsed.pred_len == parsed.label_len
    same_distinct = (_distinct_count(parsed.pred_ids, parsed.pred_len, num_ids)
                     == _distinct_count(parsed.label_ids, parsed.label_len, num_ids))
    in_range = jnp.all(~pred_valid | ((parsed.pred_ids >= 1) & (parsed.pred_ids <= parsed.num)))
    valid = parsed.format_ok & same_count & same_distinct & in_range & (parsed.pred_len <= n)

    rel_n = parsed.rel_by_id[jnp.clip(parsed.pred_ids, 0, n)] * pred_valid
    ndcg = ndcg_at_k(rel_n, parsed.num_relevant, k, pred_valid)
    recall = recall_at_k(rel_n, parsed.num_relevant, k, pred_valid)
    rbo = rank_biased_overlap(parsed.pred_ids, parsed.label_ids, jnp.minimum(parsed.pred_len, n), parsed.label_len,
                              p=rbo_p, num_ids=num_ids)
    ndcg, recall, rbo = (jnp.where(valid, x, 0.0) for x in (ndcg, recall, rbo))
    w_ndcg, w_recall, w_rbo = weights
    combined = w_ndcg * ndcg + w_recall * recall + w_rbo * rbo
    reward = jnp.where(parsed.format_ok, jnp.where(valid, combined, 0.0), -1.0)
    return {"reward": reward, "ndcg": ndcg, "recall": recall, "rbo": rbo, "format_ok": parsed.format_ok,
            "valid": valid}


def multiview_reward(parsed: ParsedResponse, weights=MULTIVIEW_WEIGHTS, rbo_p: float = 1.0, k: int = 10):
    """In-graph reward of one rollout (jit- and vmap-able; vmap over [batch, group] for GRPO)."""
    return reward_views(parsed, weights, rbo_p, k)["reward"]


_jitted_reward = jax.jit(multiview_reward, static_argnames=("weights", "rbo_p", "k"))


def score_response(response: str, label: str, initial_list: list[str], relevant_docids: list[str],
                   weights=MULTIVIEW_WEIGHTS, rbo_p: float = 1.0) -> float:
    """The SPEC §4 reward of one response (host convenience around the in-graph `multiview_reward`)."""
    max_ids = max(MAX_IDS, len(initial_list), len(_ids(label)))
    parsed = parse_response(response, label, initial_list, relevant_docids, max_ids=max_ids)
    return float(_jitted_reward(parsed, weights=tuple(weights), rbo_p=float(rbo_p)))
