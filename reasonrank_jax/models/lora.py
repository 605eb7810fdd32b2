"""LoRA adapters over the stacked parameter layout: W' = W + (alpha / rank) · A · B.

The adapters are a pytree of their own, parallel to the base parameters, so the base can stay frozen (outside
the optimizer state) and a checkpoint holds the adapters alone. An adapted projection `layers/attn/q_proj/kernel`
[l, in, out] gets `layers/attn/q_proj/lora_a` [l, in, rank] and `.../lora_b` [l, rank, out]: the names
`reasonrank_jax.sharding` derives their shardings from. As in PEFT, A starts uniform in ±1/sqrt(in) (kaiming
uniform with a = sqrt(5)) and B at zero, so a fresh adapter leaves the model unchanged.

The forward pass merges the adapters into the kernels it reads (`merge_lora`): x·(W + s·A·B) equals
x·W + s·(x·A)·B, the gradients reach A and B only, and the model code stays the one the parity tests check.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# target name -> (module, projection) in the stacked layout
LORA_TARGETS: dict[str, tuple[str, str]] = {
    "q": ("attn", "q_proj"), "k": ("attn", "k_proj"), "v": ("attn", "v_proj"), "o": ("attn", "o_proj"),
    "gate": ("mlp", "gate_proj"), "up": ("mlp", "up_proj"), "down": ("mlp", "down_proj"),
}
# Hugging Face / PEFT module names of the targets, for adapter export
PEFT_MODULES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj",
                "down": "down_proj"}


def lora_scale(alpha: float, rank: int) -> float:
    return alpha / rank


def init_lora(params, rank: int, targets, rng, dtype=jnp.float32) -> dict:
    """Adapters for `targets` (names of LORA_TARGETS) over the stacked `params`: A uniform, B zero."""
    lora: dict = {"layers": {}}
    keys = jax.random.split(rng, len(targets))
    for key, target in zip(keys, targets):
        module, projection = LORA_TARGETS[target]
        layers, fan_in, fan_out = params["layers"][module][projection]["kernel"].shape
        bound = 1.0 / jnp.sqrt(fan_in)
        lora["layers"].setdefault(module, {})[projection] = {
            "lora_a": jax.random.uniform(key, (layers, fan_in, rank), dtype, -bound, bound),
            "lora_b": jnp.zeros((layers, rank, fan_out), dtype),
        }
    return lora


def merge_lora(params, lora, scale: float):
    """The base parameters with each adapted kernel replaced by W + scale · A · B (in the kernel's dtype)."""
    layers = dict(params["layers"])
    for module, projections in lora["layers"].items():
        merged_module = dict(layers[module])
        for projection, factors in projections.items():
            kernel = merged_module[projection]["kernel"]
            delta = jnp.einsum("lir,lro->lio", factors["lora_a"].astype(jnp.float32),
                               factors["lora_b"].astype(jnp.float32))
            merged_module[projection] = {**merged_module[projection],
                                         "kernel": (kernel.astype(jnp.float32) + scale * delta).astype(kernel.dtype)}
        layers[module] = merged_module
    return {**params, "layers": layers}


def lora_targets_of(lora) -> list[str]:
    """The target names present in an adapter tree, in LORA_TARGETS order."""
    present = {(m, p) for m, projections in lora["layers"].items() for p in projections}
    return [name for name, where in LORA_TARGETS.items() if where in present]
