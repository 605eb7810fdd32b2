"""Ranking metrics in jnp and the GRPO multi-view reward (SPEC §4)."""

from reasonrank_jax.ranking.metrics import ndcg_at_k, rank_biased_overlap, recall_at_k
from reasonrank_jax.ranking.reward import (MULTIVIEW_WEIGHTS, NDCG_ONLY_WEIGHTS, ParsedResponse, multiview_reward,
                                           parse_response, score_response, stack_parsed)

__all__ = ["ndcg_at_k", "rank_biased_overlap", "recall_at_k", "MULTIVIEW_WEIGHTS", "NDCG_ONLY_WEIGHTS",
           "ParsedResponse", "multiview_reward", "parse_response", "score_response", "stack_parsed"]
