"""The pure, jitted halves of a GRPO step (SPEC §5): the log-prob pass and the update.

Sequences are [prompt | response] rows: the prompt left-padded to a bucket, the response (the rollout's tokens,
EOS included) right-padded to `response_len`; `response_mask` marks the rollout's tokens.

- `rollout_logprobs`: old log-probs (the policy before the step's updates) and reference log-probs (the frozen
  starting policy: under LoRA the same base weights without the adapters, so the weights are in memory once; under
  full fine-tuning a frozen copy passed as `ref_params`), over [n, micro, ...] micro-batches.
  `policy_logprobs` and `reference_logprobs` are its halves: the run computes old log-probs only for the rows of
  the second and later mini-batches (the first update is on-policy, see below) and reference log-probs only when
  the KL term is on.
- `update_step(spec, state, batch) -> (state, metrics)`: one optimizer update on one mini-batch given as
  [accum, micro, ...] micro-batches. Numerators and the token count are accumulated over the micro-batches and
  divided once, so the loss is the exact token mean of the whole mini-batch. With `on_policy` (the step's first
  mini-batch: the parameters are those that sampled the rollouts) the old log-probs are the current ones under
  stop_gradient, so the ratio is exactly 1, not 1 up to the rounding of two compiled programs; `old_logp_br` is then
  not read. `metrics["logp_diff"]` is the mean |trainer - sampler| log-prob of the mini-batch's tokens
  (`sampler_logp_br`, the decoder's), meaningful on the on-policy update.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from reasonrank_jax.sharding import MeshJitted
from reasonrank_jax.training.grpo.loss import SUM_KEYS, grpo_loss_sums
from reasonrank_jax.training.logprobs import response_logprobs
from reasonrank_jax.training.sft import StepSpec
from reasonrank_jax.training.state import TrainState

SEQUENCE_KEYS = ("input_ids_bt", "attention_mask_bt")
TOKEN_KEYS = ("response_mask_br", "old_logp_br", "ref_logp_br", "sampler_logp_br")


@dataclasses.dataclass(frozen=True)
class GRPOSpec:
    """What the GRPO programs need besides the state; hashable (a static jit argument)."""

    step: StepSpec  # cfg, optimizer, schedule, lora_scale, logits_chunk
    clip: float = 0.2
    clip_c: float = 3.0
    kl_coef: float = 0.001
    temperature: float = 1.0

    def logprobs(self, params, batch):
        response_len = batch["response_mask_br"].shape[-1]
        return response_logprobs(self.step.cfg, params, batch["input_ids_bt"], batch["attention_mask_bt"],
                                 response_len, self.step.logits_chunk, self.temperature)


def _over_micro_batches(spec: GRPOSpec, params, batch):
    return jax.lax.map(lambda micro: spec.logprobs(params, micro),
                       {k: batch[k] for k in (*SEQUENCE_KEYS, "response_mask_br")})


def policy_logprobs(spec: GRPOSpec, params, trainable, batch):
    """[n, micro, response_len]: the policy's log-probs of sequences given as [n, micro, ...]."""
    return _over_micro_batches(spec, spec.step.model_params(params, trainable), batch)


def reference_logprobs(spec: GRPOSpec, reference_params, batch):
    """[n, micro, response_len]: the reference's (LoRA: pass the base params, the adapters left out)."""
    return _over_micro_batches(spec, reference_params, batch)


def rollout_logprobs(spec: GRPOSpec, params, trainable, ref_params, batch):
    """(old_logp, ref_logp), each [n, micro, response_len], for sequences given as [n, micro, ...]. ref_params None:
    the reference is `params` itself (LoRA: the base without the adapters)."""
    return (policy_logprobs(spec, params, trainable, batch),
            reference_logprobs(spec, params if ref_params is None else ref_params, batch))


def update_step(spec: GRPOSpec, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One update on a mini-batch of [accum, micro, ...] arrays (+ advantages_b [accum, micro], on_policy [])."""
    trainable = state.trainable

    def micro_sums(tr, micro):
        logp_br = spec.logprobs(spec.step.model_params(state.params, tr), micro)
        old_br = jnp.where(batch["on_policy"], jax.lax.stop_gradient(logp_br), micro["old_logp_br"])
        sums, tokens = grpo_loss_sums(logp_br, old_br, micro["ref_logp_br"], micro["advantages_b"],
                                      micro["response_mask_br"], clip=spec.clip, clip_c=spec.clip_c,
                                      kl_coef=spec.kl_coef)
        mask_br = micro["response_mask_br"].astype(bool)
        sums["logp_diff"] = jnp.sum(jnp.where(mask_br, jnp.abs(logp_br - micro["sampler_logp_br"]), 0.0))
        return sums["loss"], (sums, tokens)

    def accumulate(carry, micro):
        grads, sums, tokens = carry
        (_, (s, t)), g = jax.value_and_grad(micro_sums, has_aux=True)(trainable, micro)
        grads = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), grads, g)
        return (grads, {k: sums[k] + s[k] for k in sums}, tokens + t), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), trainable)
    micro_batches = {k: batch[k] for k in (*SEQUENCE_KEYS, *TOKEN_KEYS, "advantages_b")}
    sums0 = {k: jnp.float32(0) for k in (*SUM_KEYS, "logp_diff")}
    (grads, sums, tokens), _ = jax.lax.scan(accumulate, (zeros, sums0, jnp.float32(0)), micro_batches)
    scale = 1.0 / jnp.maximum(tokens, 1.0)
    grads = jax.tree.map(lambda g, p: (g * scale).astype(p.dtype), grads, trainable)
    updates, opt_state = spec.step.optimizer.update(grads, state.opt_state, trainable)
    new_trainable = optax.apply_updates(trainable, updates)
    metrics = {k: v * scale for k, v in sums.items()}
    metrics.update(tokens=tokens, grad_norm=optax.tree.norm(grads), lr=spec.step.schedule(state.step))
    trained = {"lora": new_trainable} if spec.step.lora_scale is not None else {"params": new_trainable}
    return state.replace(step=state.step + 1, opt_state=opt_state, **trained), metrics


def micro_sharding(mesh, rank: int) -> NamedSharding:
    """[n, micro, ...] arrays: the micro-batch split over the data-parallel axes."""
    return NamedSharding(mesh, P(None, ("data", "fsdp"), *([None] * (rank - 2))))


def batch_shardings(mesh) -> dict:
    replicated = NamedSharding(mesh, P())
    return {**{k: micro_sharding(mesh, 3) for k in (*SEQUENCE_KEYS, *TOKEN_KEYS)},
            "advantages_b": micro_sharding(mesh, 2), "on_policy": replicated}


def jit_update_step(spec: GRPOSpec, shardings: TrainState, mesh):
    return MeshJitted(jax.jit(lambda state, batch: update_step(spec, state, batch),
                              in_shardings=(shardings, batch_shardings(mesh)),
                              out_shardings=(shardings, NamedSharding(mesh, P())), donate_argnums=(0,)), mesh)


def _sequence_shardings(mesh):
    return {k: micro_sharding(mesh, 3) for k in (*SEQUENCE_KEYS, "response_mask_br")}


def jit_rollout_logprobs(spec: GRPOSpec, shardings: TrainState, mesh, with_ref_params: bool):
    sequences, out = _sequence_shardings(mesh), micro_sharding(mesh, 3)
    if with_ref_params:
        return MeshJitted(jax.jit(
            lambda params, trainable, ref, batch: rollout_logprobs(spec, params, trainable, ref, batch),
            in_shardings=(shardings.params, shardings.trainable, shardings.params, sequences),
            out_shardings=(out, out)), mesh)
    return MeshJitted(jax.jit(lambda params, trainable, batch: rollout_logprobs(spec, params, trainable, None, batch),
                              in_shardings=(shardings.params, shardings.trainable, sequences),
                              out_shardings=(out, out)), mesh)


def jit_policy_logprobs(spec: GRPOSpec, shardings: TrainState, mesh):
    return MeshJitted(jax.jit(lambda params, trainable, batch: policy_logprobs(spec, params, trainable, batch),
                              in_shardings=(shardings.params, shardings.trainable, _sequence_shardings(mesh)),
                              out_shardings=micro_sharding(mesh, 3)), mesh)


def jit_reference_logprobs(spec: GRPOSpec, shardings: TrainState, mesh):
    return MeshJitted(jax.jit(lambda params, batch: reference_logprobs(spec, params, batch),
                              in_shardings=(shardings.params, _sequence_shardings(mesh)),
                              out_shardings=micro_sharding(mesh, 3)), mesh)
