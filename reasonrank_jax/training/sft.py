"""Cold-start SFT: the response-only token-mean cross-entropy and a pure, jitted `train_step`.

A global batch arrives as [accum, micro, ...] arrays: input_ids and attention_mask [accum, micro, seq], and the
response window (data/stream.py `response_window`): response_start [accum, micro], the index of the hidden state
that predicts each row's first response token, and response_mask [accum, micro, R] over the R positions from there,
R a static bucket of the batch's longest response. The output head runs on those R positions only, not on the
prompt (thousands of tokens in ReasonRank, against ~1k of response).

The loss of each micro-batch is kept as a numerator (the summed negative log-likelihood of its response tokens) and
a denominator (their count); gradients of the numerators are summed over the micro-batches and divided by the total
count once, so k micro-batches of b equal one batch of k·b exactly, uneven response lengths included.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from reasonrank_jax.models.config import ModelConfig
from reasonrank_jax.models.lora import merge_lora
from reasonrank_jax.sharding import MeshJitted
from reasonrank_jax.training.logprobs import window_logprobs
from reasonrank_jax.training.state import TrainState

BATCH_KEYS = ("input_ids_bt", "attention_mask_bt", "response_start_b", "response_mask_br")


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """What a step needs besides the state; hashable, so it can be a static jit argument."""

    cfg: ModelConfig
    optimizer: optax.GradientTransformation
    schedule: Callable
    lora_scale: float | None = None  # None: full fine-tuning
    logits_chunk: int = 1024

    def model_params(self, params, trainable):
        return merge_lora(params, trainable, self.lora_scale) if self.lora_scale is not None else trainable


def sft_loss_sums(cfg: ModelConfig, params, batch: dict, logits_chunk: int = 1024):
    """(numerator, denominator): summed NLL of the response tokens and their count. The same values as
    next_token_logprobs(...) * loss_mask summed over every position, with the head applied to the response window
    only (the batch's response_start_b and response_mask_br, data/stream.py `response_window`)."""
    mask_br = batch["response_mask_br"].astype(jnp.float32)
    logprobs_br = window_logprobs(cfg, params, batch["input_ids_bt"], batch["attention_mask_bt"],
                                  batch["response_start_b"], mask_br.shape[-1], logits_chunk)
    return -(logprobs_br * mask_br).sum(), mask_br.sum()


def train_step(spec: StepSpec, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One optimizer update on a global batch of [accum, micro, ...] arrays (BATCH_KEYS). metrics["loss"] is the
    batch's loss under the parameters before the update."""
    trainable = state.trainable

    def micro_loss(tr, micro):
        numerator, denominator = sft_loss_sums(spec.cfg, spec.model_params(state.params, tr), micro,
                                               spec.logits_chunk)
        return numerator, denominator

    def accumulate(carry, micro):
        grads, numerator, denominator = carry
        (num, den), g = jax.value_and_grad(micro_loss, has_aux=True)(trainable, micro)
        grads = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), grads, g)
        return (grads, numerator + num, denominator + den), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), trainable)
    (grads, numerator, denominator), _ = jax.lax.scan(accumulate, (zeros, 0.0, 0.0),
                                                      {k: batch[k] for k in BATCH_KEYS})
    scale = 1.0 / jnp.maximum(denominator, 1.0)
    grads = jax.tree.map(lambda g, p: (g * scale).astype(p.dtype), grads, trainable)
    updates, opt_state = spec.optimizer.update(grads, state.opt_state, trainable)
    new_trainable = optax.apply_updates(trainable, updates)
    metrics = {"loss": numerator * scale, "tokens": denominator, "grad_norm": optax.tree.norm(grads),
               "lr": spec.schedule(state.step)}
    new_state = state.replace(step=state.step + 1, opt_state=opt_state,
                              **({"lora": new_trainable} if spec.lora_scale is not None else {"params": new_trainable}))
    return new_state, metrics


def batch_sharding(mesh, ndim: int = 3) -> NamedSharding:
    """[accum, micro, ...]: the micro-batch split over the data-parallel axes."""
    return NamedSharding(mesh, P(None, ("data", "fsdp"), *([None] * (ndim - 2))))


def batch_shardings(mesh) -> dict:
    """The sharding of each of BATCH_KEYS (response_start_b is [accum, micro], the others 3-D)."""
    return {k: batch_sharding(mesh, 2 if k == "response_start_b" else 3) for k in BATCH_KEYS}


def jit_train_step(spec: StepSpec, shardings: TrainState, mesh):
    """The step compiled with the state's shardings in and out and the state donated."""
    replicated = NamedSharding(mesh, P())
    return MeshJitted(jax.jit(lambda state, batch: train_step(spec, state, batch),
                              in_shardings=(shardings, batch_shardings(mesh)),
                              out_shardings=(shardings, replicated), donate_argnums=(0,)), mesh)
