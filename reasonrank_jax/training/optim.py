"""AdamW with global-norm clipping and the Hugging Face Trainer's schedules (SPEC §5).

Update s (counting from 0) uses lr(s), as the Trainer's LambdaLR does: a linear warmup over
ceil(warmup_ratio · total) updates starting at 0, then cosine decay to 0 at `total`, or constant.
torch's AdamW decays the weights by lr·wd before its Adam step; optax's adamw adds wd·w to the Adam direction
before scaling by -lr: the same update.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(total_steps * warmup_ratio)


def learning_rate_schedule(lr: float, total_steps: int, warmup_ratio: float = 0.0, schedule: str = "cosine"):
    """optax schedule: count (updates done) -> learning rate."""
    warmup = warmup_steps(total_steps, warmup_ratio)

    def rate(count):
        count = jnp.asarray(count, jnp.float32)
        warm = count / max(warmup, 1)
        if schedule == "constant":
            decay = jnp.ones_like(count)
        elif schedule == "cosine":
            progress = (count - warmup) / max(total_steps - warmup, 1)
            decay = 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.clip(progress, 0.0, 1.0)))
        else:
            raise ValueError(f"unknown schedule {schedule!r}")
        return lr * jnp.where(count < warmup, warm, decay)

    return rate


def make_optimizer(lr: float, total_steps: int, *, schedule: str = "cosine", warmup_ratio: float = 0.0,
                   weight_decay: float = 0.0, clip_norm: float = 1.0, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8) -> tuple[optax.GradientTransformation, callable]:
    """(optimizer, schedule). clip_norm 0 turns clipping off."""
    rate = learning_rate_schedule(lr, total_steps, warmup_ratio, schedule)
    parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm > 0 else []
    parts.append(optax.adamw(rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    return optax.chain(*parts), rate
