"""The GRPO objective exactly as SPEC §5 gives it (ReasonRank's verl settings).

advantage  A_i = (r_i - mean(r)) / (std(r) + 1e-6) over a prompt's group of rollouts, std with ddof = 1; a group of
           one rollout has mean 0 and std 1 (verl), so A = r / (1 + 1e-6). The same A on every response token.
ratio      exp(logp - old_logp), the log-ratio clamped to [-20, 20] (verl)
policy     l1 = max(-A·ratio, -A·clip(ratio, 1 - clip, 1 + clip));  l = min(-A·clip_c, l1) where A < 0, else l1
KL         k3 "low_var_kl": d = ref_logp - logp (clamped to [-20, 20]), kl = exp(d) - d - 1 clamped to [-10, 10]
loss       token mean over the mini-batch: Σ (l + kl_coef·kl)·mask / Σ mask

`grpo_loss_sums` returns the numerators and the token count separately, so micro-batches accumulate into the exact
token mean of the whole mini-batch (`training.grpo.step`); `grpo_loss` divides them.
"""

from __future__ import annotations

import jax.numpy as jnp

ADVANTAGE_EPS = 1e-6
LOG_RATIO_CLAMP = 20.0
KL_CLAMP = 10.0
SUM_KEYS = ("loss", "pg_loss", "kl_loss", "pg_clipfrac", "pg_clipfrac_lower", "ppo_kl")


def group_advantages(rewards_pr):
    """[prompts, rollouts] rewards -> advantages of the same shape (SPEC §5)."""
    rewards_pr = jnp.asarray(rewards_pr, jnp.float32)
    if rewards_pr.shape[-1] == 1:  # verl: a group of one has mean 0 and std 1
        return rewards_pr / (1.0 + ADVANTAGE_EPS)
    mean = jnp.mean(rewards_pr, axis=-1, keepdims=True)
    std = jnp.std(rewards_pr, axis=-1, keepdims=True, ddof=1)
    return (rewards_pr - mean) / (std + ADVANTAGE_EPS)


def grpo_loss_sums(logp_bt, old_logp_bt, ref_logp_bt, advantages_b, mask_bt, *, clip: float = 0.2,
                   clip_c: float = 3.0, kl_coef: float = 0.001):
    """(sums, tokens): the masked sums over tokens of each SUM_KEYS term, and Σ mask."""
    mask_bt = jnp.asarray(mask_bt).astype(bool)
    a_bt = jnp.broadcast_to(jnp.asarray(advantages_b, jnp.float32)[:, None], mask_bt.shape)
    # padded tokens may hold anything (even inf): zero them first, so that no NaN reaches a gradient
    logp_bt, old_logp_bt, ref_logp_bt = (jnp.where(mask_bt, x, 0.0) for x in (logp_bt, old_logp_bt, ref_logp_bt))
    log_ratio = jnp.clip(logp_bt - old_logp_bt, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = jnp.exp(log_ratio)
    pg_unclipped = -a_bt * ratio
    pg_clipped = -a_bt * jnp.clip(ratio, 1.0 - clip, 1.0 + clip)
    pg_l1 = jnp.maximum(pg_unclipped, pg_clipped)
    pg_lower = -a_bt * clip_c
    pg = jnp.where(a_bt < 0, jnp.minimum(pg_lower, pg_l1), pg_l1)
    d = jnp.clip(ref_logp_bt - logp_bt, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    kl = jnp.clip(jnp.exp(d) - d - 1.0, -KL_CLAMP, KL_CLAMP)

    def total(x):
        return jnp.sum(jnp.where(mask_bt, x, 0.0))

    sums = {"loss": total(pg + kl_coef * kl), "pg_loss": total(pg), "kl_loss": total(kl),
            "pg_clipfrac": total((pg_clipped > pg_unclipped).astype(jnp.float32)),
            "pg_clipfrac_lower": total(((pg_l1 > pg_lower) & (a_bt < 0)).astype(jnp.float32)),
            "ppo_kl": total(-log_ratio)}
    return sums, jnp.sum(mask_bt.astype(jnp.float32))


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, *, clip: float = 0.2, clip_c: float = 3.0,
              kl_coef: float = 0.001):
    """(loss, aux): the token-mean loss of SPEC §5 over [batch, tokens] inputs (advantages: [batch]), and aux with
    the token means "pg_loss", "kl_loss", "pg_clipfrac", "pg_clipfrac_lower", "ppo_kl" (approx. KL old -> new)."""
    sums, tokens = grpo_loss_sums(logp, old_logp, ref_logp, advantages, mask, clip=clip, clip_c=clip_c,
                                  kl_coef=kl_coef)
    scale = 1.0 / jnp.maximum(tokens, 1.0)
    aux = {k: v * scale for k, v in sums.items() if k != "loss"}
    return sums["loss"] * scale, aux


__all__ = ["group_advantages", "grpo_loss", "grpo_loss_sums", "SUM_KEYS"]
