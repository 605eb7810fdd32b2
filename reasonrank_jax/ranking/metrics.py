"""Ranking metrics in jnp, for use under jit and vmap (rewards, in-graph evaluation).

Each function scores one ranked list of static length n (pad shorter ones; batch with vmap):
  rel_n      relevance (0/1) of the item at each rank position
  valid_n    1 where a position holds an item, 0 for padding (windows shorter than 20)
  num_relevant  number of relevant documents of the query (retrieved or not): the ideal ranking's size
Gains are binary, as in ReasonRank's reward (relevant_docids have relevance 1). The definitions follow trec_eval:
nDCG@k = DCG@k / IDCG@k with discount 1/log2(rank + 1), the ideal list holding min(k, num_relevant) relevant items;
Recall@k = relevant in the top k / num_relevant; both are 0 when num_relevant is 0.
"""

from __future__ import annotations

import jax.numpy as jnp


def _discount(n: int):
    return 1.0 / jnp.log2(jnp.arange(n, dtype=jnp.float32) + 2.0)


def ndcg_at_k(rel_n, num_relevant, k: int = 10, valid_n=None):
    n = rel_n.shape[-1]
    valid_n = jnp.ones_like(rel_n) if valid_n is None else valid_n
    in_top_k = jnp.arange(n) < k
    gains_n = rel_n.astype(jnp.float32) * valid_n * in_top_k
    dcg = jnp.sum(gains_n * _discount(n), axis=-1)
    idcg = jnp.sum(jnp.where(jnp.arange(k) < num_relevant, _discount(k), 0.0))
    return jnp.where(idcg > 0, dcg / jnp.where(idcg > 0, idcg, 1.0), 0.0)


def recall_at_k(rel_n, num_relevant, k: int = 10, valid_n=None):
    n = rel_n.shape[-1]
    valid_n = jnp.ones_like(rel_n) if valid_n is None else valid_n
    hits = jnp.sum(rel_n.astype(jnp.float32) * valid_n * (jnp.arange(n) < k), axis=-1)
    return jnp.where(num_relevant > 0, hits / jnp.maximum(num_relevant, 1), 0.0)


def rank_biased_overlap(s_n, t_n, s_len, t_len, p: float = 1.0, num_ids: int | None = None):
    """RBO of two rankings of integer ids (each list without duplicates), truncated at depth k = min(len s, len t).

    With A_d = |s[:d] ∩ t[:d]| / d:
      p = 1.0 (default): the average overlap (1/k) Σ_{d=1..k} A_d, which is what the `rbo` package's
        `RankingSimilarity(S, T).rbo()` returns and what ReasonRank's reward used;
      0 < p < 1: Webber et al.'s truncated RBO (1 - p) Σ_{d=1..k} p^(d-1) A_d (`.rbo(p=p)` of the same package).
    Both lists empty -> 1, exactly one empty -> 0 (as the package does). Ids must lie in [0, num_ids).
    """
    n = s_n.shape[-1]
    num_ids = num_ids or n + 2
    positions = jnp.arange(n)
    s_valid = positions < s_len
    t_valid = positions < t_len
    # seen[d, v]: id v appears among the first d+1 items.
    s_seen = jnp.cumsum((s_n[:, None] == jnp.arange(num_ids)) & s_valid[:, None], axis=0) > 0
    t_seen = jnp.cumsum((t_n[:, None] == jnp.arange(num_ids)) & t_valid[:, None], axis=0) > 0
    overlap_d = jnp.sum(s_seen & t_seen, axis=-1).astype(jnp.float32)
    agreement_d = overlap_d / (positions + 1.0)
    k = jnp.minimum(s_len, t_len)
    within_k = positions < k
    if p == 1.0:
        value = jnp.sum(agreement_d * within_k) / jnp.maximum(k, 1)
    else:
        weights = (1.0 - p) * p ** positions.astype(jnp.float32)
        value = jnp.sum(agreement_d * weights * within_k)
    both_empty = (s_len == 0) & (t_len == 0)
    return jnp.where(k > 0, value, jnp.where(both_empty, 1.0, 0.0))
