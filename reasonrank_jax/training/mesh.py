"""One device mesh for everything, axes ("data", "fsdp", "tensor"), and partition rules keyed by parameter path.

Layer-stacked parameters lead with the layer axis, which is never sharded. A rule's mesh axis is dropped for a
dimension it does not divide (e.g. a vocabulary of 151,936 over 3 devices), so every model loads on every mesh.
"""

from __future__ import annotations

import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")

# (regex over the parameter path, spec per dimension). First match wins; no match = replicated.
PARTITION_RULES: tuple[tuple[str, tuple], ...] = (
    (r"^embed/embedding$", ("tensor", "fsdp")),                     # [v, d]
    (r"^lm_head/kernel$", ("fsdp", "tensor")),                      # [d, v]
    (r"^layers/attn/[qkv]_proj/kernel$", (None, "fsdp", "tensor")),  # [l, d, heads*e]: heads split over tensor
    (r"^layers/attn/[qkv]_proj/bias$", (None, "tensor")),           # [l, heads*e]
    (r"^layers/attn/o_proj/kernel$", (None, "tensor", "fsdp")),     # [l, heads*e, d]
    (r"^layers/mlp/(gate|up)_proj/kernel$", (None, "fsdp", "tensor")),  # [l, d, f]
    (r"^layers/mlp/down_proj/kernel$", (None, "tensor", "fsdp")),   # [l, f, d]
    (r"norm/scale$", ()),                                           # norms: replicated
    (r"lora_[ab]$", ()),                                            # LoRA factors are small: replicated
)


def make_mesh(shape: tuple[int, int, int] | None = None, devices=None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh. Default: all devices on "fsdp". One axis may be -1 (the rest)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = list(shape or (1, len(devices), 1))
    if shape.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {shape}")
    if -1 in shape:
        known = int(np.prod([n for n in shape if n != -1]))
        shape[shape.index(-1)] = len(devices) // known
    if int(np.prod(shape)) != len(devices):
        raise ValueError(f"mesh shape {tuple(shape)} needs {int(np.prod(shape))} devices, have {len(devices)}")
    return Mesh(np.asarray(devices).reshape(shape), AXES)


def partition_spec(mesh: Mesh, path: str, shape: tuple[int, ...]) -> P:
    for pattern, spec in PARTITION_RULES:
        if re.search(pattern, path):
            break
    else:
        spec = ()
    spec = tuple(spec) + (None,) * (len(shape) - len(spec))
    spec = tuple(axis if axis is not None and dim % mesh.shape[axis] == 0 else None
                 for axis, dim in zip(spec, shape))
    return P(*spec)


def param_sharding(mesh: Mesh, path: str, shape: tuple[int, ...]) -> NamedSharding:
    return NamedSharding(mesh, partition_spec(mesh, path, shape))


def params_shardings(mesh: Mesh, params) -> dict:
    """A pytree of NamedShardings matching `params` (arrays or ShapeDtypeStructs)."""
    def one(path, leaf):
        return param_sharding(mesh, "/".join(str(getattr(k, "key", k)) for k in path), tuple(leaf.shape))

    return jax.tree_util.tree_map_with_path(one, params)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Batch dimension split over ("data", "fsdp"); the rest replicated."""
    return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def shard_params(mesh: Mesh, params):
    return jax.device_put(params, params_shardings(mesh, params))
