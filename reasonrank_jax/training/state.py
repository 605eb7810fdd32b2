"""The train state, a pytree passed in and out of the jitted step, and its shardings on the mesh."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from reasonrank_jax.sharding import params_shardings


class TrainState(flax.struct.PyTreeNode):
    """step: optimizer updates done. params: the model (frozen base under LoRA). lora: the adapters ({} for full
    fine-tuning). opt_state: over the trainable tree (lora if any, else params). rng: for steps that sample."""

    step: jax.Array
    params: Any
    lora: Any
    opt_state: Any
    rng: jax.Array

    @property
    def trainable(self):
        return self.lora if self.lora else self.params


def init_state(params, lora, optimizer: optax.GradientTransformation, rng) -> TrainState:
    trainable = lora if lora else params
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, lora=lora, opt_state=optimizer.init(trainable),
                      rng=rng)


def state_shardings(mesh, abstract_state: TrainState, optimizer: optax.GradientTransformation) -> TrainState:
    """NamedShardings for every leaf: parameters and adapters by the partition rules, optimizer moments like
    the parameters they track, scalars (counts, step, rng) replicated."""
    replicated = NamedSharding(mesh, P())
    params = params_shardings(mesh, abstract_state.params)
    lora = params_shardings(mesh, abstract_state.lora) if abstract_state.lora else abstract_state.lora
    trainable = lora if abstract_state.lora else params
    opt_state = optax.tree_map_params(optimizer, lambda _, sharding: sharding, abstract_state.opt_state, trainable,
                                      transform_non_params=lambda _: replicated)
    return TrainState(step=replicated, params=params, lora=lora, opt_state=opt_state, rng=replicated)
