"""Next-token choice from logits: greedy, or sampling with temperature, top-k, top-p and min-p (all in-graph).

The settings are a frozen dataclass used as a static jit argument, so greedy and each sampling setting compile to
their own program with no dead branches. Filters apply in the order temperature -> top-k -> top-p -> min-p, as
transformers' logits processors and vLLM do.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    scaled_logprobs: bool = False  # report log-probs under logits / temperature (GRPO's policy), not the raw ones

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or not 0 <= self.min_p <= 1:
            raise ValueError(f"invalid sampling settings {self}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def filtered_logits(logits_bv, params: SamplingParams):
    """Logits after temperature and the top-k / top-p / min-p filters (filtered entries are -inf)."""
    logits_bv = logits_bv.astype(jnp.float32) / params.temperature
    neg_inf = jnp.finfo(jnp.float32).min
    if params.top_k > 0:
        kth_largest = jax.lax.top_k(logits_bv, params.top_k)[0][:, -1:]
        logits_bv = jnp.where(logits_bv < kth_largest, neg_inf, logits_bv)
    if params.top_p < 1.0:
        sorted_desc = jnp.sort(logits_bv, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # keep the smallest prefix whose mass reaches top_p: a token is kept if the mass before it is < top_p
        keep = mass_before < params.top_p
        threshold = jnp.min(jnp.where(keep, sorted_desc, jnp.inf), axis=-1, keepdims=True)
        logits_bv = jnp.where(logits_bv < threshold, neg_inf, logits_bv)
    if params.min_p > 0.0:
        probs = jax.nn.softmax(logits_bv, axis=-1)
        floor = params.min_p * jnp.max(probs, axis=-1, keepdims=True)
        logits_bv = jnp.where(probs < floor, neg_inf, logits_bv)
    return logits_bv


def greedy_token(logits_bv):
    """jnp.argmax (first index of the maximum), as two vectorised reductions: XLA:CPU runs argmax's variadic
    (value, index) reduce as scalar code, 5x slower over a vocabulary row than a max and a min."""
    v = logits_bv.shape[-1]
    best_b1 = jnp.max(logits_bv, axis=-1, keepdims=True)
    return jnp.min(jnp.where(logits_bv == best_b1, jnp.arange(v), v), axis=-1)


def next_token(logits_bv, key, params: SamplingParams):
    """(token_b, logprob_b): the chosen token and its log-probability under the raw model distribution (temperature
    1, no filters), or with `scaled_logprobs` under logits / temperature (no filters), which is the policy GRPO's
    trainer scores (verl divides the logits by the rollout temperature too)."""
    if params.greedy:
        token_b = greedy_token(logits_bv)
    else:
        token_b = jax.random.categorical(key, filtered_logits(logits_bv, params), axis=-1)
    logits_bv = logits_bv.astype(jnp.float32)
    if params.scaled_logprobs and not params.greedy and params.temperature != 1.0:
        logits_bv = logits_bv / params.temperature
    logprob_b = jnp.take_along_axis(jax.nn.log_softmax(logits_bv, axis=-1),
                                    token_b[:, None], axis=-1)[:, 0]
    return token_b.astype(jnp.int32), logprob_b
