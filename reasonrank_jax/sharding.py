"""One device mesh for everything, axes ("data", "fsdp", "tensor"), and partition rules keyed by parameter path.

Used by models (placement on load), inference (rollout engines) and training alike. The rules cover both parameter
layouts of `models.transformer`:
  stacked (training, `init_params`, `load_pretrained`): `layers/attn/q_proj/kernel` [l, d, h*e], ...
  decode (`decode_params`): `layers/<i>/attn/qkv_proj/kernel` [d, (h + 2k)*e], `layers/<i>/mlp/gate_up_proj/...`
A rule's spec names the trailing dimensions of a parameter; leading ones (the stacked layer axis) stay unsharded,
so one rule serves both layouts. Column-parallel projections (q, k, v, qkv, gate, up, gate_up) split their input
over "fsdp" and their output (heads, intermediate) over "tensor"; row-parallel ones (o, down) the transpose.

LoRA factors: a LoRA-adapted projection `.../<name>/kernel` [..., in, out] gets sibling parameters
`.../<name>/lora_a` [..., in, rank] and `.../<name>/lora_b` [..., rank, out] (leading the layer axis when
stacked). lora_a splits `in` as the kernel splits its input, lora_b splits `out` as the kernel splits its output;
rank is never split (too small to be worth it), so the adapter's two dots are split like the base kernel's dot.

A rule's mesh axis is dropped for a dimension it does not divide (e.g. a vocabulary of 151,936 over 3 devices), so
every model loads on every mesh.
"""

from __future__ import annotations

import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")

_LAYER = r"^layers/(\d+/)?"  # stacked layout: layers/..., decode layout: layers/<i>/...

# (regex over the parameter path, spec of the trailing dimensions). First match wins; no match = replicated (norms).
# The fused qkv / gate_up outputs are split over "tensor" as one concatenation [q | k | v] / [gate | up], so a
# device may hold q columns while another holds k and v: correct by value (GSPMD inserts the collectives at the
# split), not the Megatron layout that would give each device matching slices of q, k and v.
PARTITION_RULES: tuple[tuple[str, tuple], ...] = (
    (r"^embed/embedding$", ("tensor", "fsdp")),                                                # [v, d]
    (r"^lm_head/kernel$", ("fsdp", "tensor")),                                                 # [d, v]
    (_LAYER + r"(attn/(q|k|v|qkv)|mlp/(gate|up|gate_up))_proj/kernel$", ("fsdp", "tensor")),   # [d, out]
    (_LAYER + r"attn/(q|k|v|qkv)_proj/bias$", ("tensor",)),                                    # [out]
    (_LAYER + r"(attn/o|mlp/down)_proj/kernel$", ("tensor", "fsdp")),                          # [in, d]
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


def _rule_spec(path: str) -> tuple:
    """The trailing-dimension spec for `path`; LoRA factors derive theirs from their base kernel's rule."""
    lora = re.fullmatch(r"(.*)/lora_([ab])", path)
    if lora:
        kernel_spec = _rule_spec(f"{lora.group(1)}/kernel")
        if not kernel_spec:
            return ()
        in_axis, out_axis = kernel_spec
        return (in_axis, None) if lora.group(2) == "a" else (None, out_axis)
    for pattern, spec in PARTITION_RULES:
        if re.search(pattern, path):
            return spec
    return ()


def partition_spec(mesh: Mesh, path: str, shape: tuple[int, ...]) -> P:
    spec = _rule_spec(path)
    spec = (None,) * (len(shape) - len(spec)) + tuple(spec)
    return P(*(axis if axis is not None and dim % mesh.shape[axis] == 0 else None for axis, dim in zip(spec, shape)))


def param_sharding(mesh: Mesh, path: str, shape: tuple[int, ...]) -> NamedSharding:
    return NamedSharding(mesh, partition_spec(mesh, path, shape))


def params_shardings(mesh: Mesh, params) -> dict:
    """A pytree of NamedShardings matching `params` (arrays or ShapeDtypeStructs), in either layout."""
    def one(path, leaf):
        return param_sharding(mesh, jax.tree_util.keystr(path, simple=True, separator="/"), tuple(leaf.shape))

    return jax.tree_util.tree_map_with_path(one, params)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Batch dimension split over ("data", "fsdp"); the rest replicated."""
    return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def shard_params(mesh: Mesh, params):
    return jax.device_put(params, params_shardings(mesh, params))


def along_batch(x, last: str | None = None):
    """`x` [batch, ...] kept split over the data-parallel axes (and its last dimension over `last`), when traced
    under a mesh (`MeshJitted`); unchanged otherwise, or when the batch does not divide.

    Why: activations x [b, t, d] meet kernels [d, out] whose d is split over "fsdp" too. Left alone, XLA may keep
    the kernel in place and split x over d instead, gathering the whole global batch onto every chip: in the
    output head every chip then computed the logits of the whole batch, and in the layers held [64, 23552, 18944]
    MLP buffers (a 7B SFT step's temporaries grew from 47 GiB per chip on 8 v5p chips to 177 GiB on 64, at one
    sequence per chip). Pinning the residual stream and the logits to the batch split makes it gather the kernels,
    as FSDP means."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not {"data", "fsdp"} <= set(mesh.axis_names):
        return x
    if x.shape[0] % (mesh.shape["data"] * mesh.shape["fsdp"]):
        return x
    if last is not None and x.shape[-1] % mesh.shape[last]:
        last = None
    return jax.lax.with_sharding_constraint(x, P(("data", "fsdp"), *([None] * (x.ndim - 2)), last))


class MeshJitted:
    """A jitted function traced, lowered and called under `mesh` (`jax.set_mesh`), so that in-graph sharding hints
    (`along_batch`) see its axes."""

    def __init__(self, jitted, mesh: Mesh):
        self.jitted, self.mesh = jitted, mesh

    def __call__(self, *args, **kwargs):
        with jax.set_mesh(self.mesh):
            return self.jitted(*args, **kwargs)

    def lower(self, *args, **kwargs):
        with jax.set_mesh(self.mesh):
            return self.jitted.lower(*args, **kwargs)
