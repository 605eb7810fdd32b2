"""Hugging Face checkpoints <-> our parameter pytree.

Import reads `config.json` and `model.safetensors` (or the shards named by `model.safetensors.index.json`) tensor by
tensor: each stacked parameter is assembled on the host from memory-mapped tensors, placed on its device(s), and
freed before the next one, so the host never holds two full copies of the weights. Export writes `config.json`,
`generation_config.json`, safetensors shards no larger than `max_shard_size` with `model.safetensors.index.json`,
and copies tokenizer files when given a tokenizer directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any, Iterator

import jax
import ml_dtypes
import numpy as np

from reasonrank_jax.errors import InputError
from reasonrank_jax.models.config import ModelConfig
from reasonrank_jax.models.safetensors_io import SafetensorsFile, write_safetensors
from reasonrank_jax.models.transformer import init_params

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "added_tokens.json", "chat_template.jinja", "chat_template.json",
                   "generation_config.json")

# Our parameter path -> (Hugging Face tensor name, is a linear kernel stored [out, in] by torch).
# "{i}" marks a layer-stacked parameter: leaf [l, ...] <-> tensors model.layers.{i}.<name>.
_NAME_TABLE: dict[str, tuple[str, bool]] = {
    "embed/embedding": ("model.embed_tokens.weight", False),
    "final_norm/scale": ("model.norm.weight", False),
    "lm_head/kernel": ("lm_head.weight", True),
    "layers/input_norm/scale": ("model.layers.{i}.input_layernorm.weight", False),
    "layers/post_attn_norm/scale": ("model.layers.{i}.post_attention_layernorm.weight", False),
    "layers/attn/q_norm/scale": ("model.layers.{i}.self_attn.q_norm.weight", False),
    "layers/attn/k_norm/scale": ("model.layers.{i}.self_attn.k_norm.weight", False),
    "layers/mlp/gate_proj/kernel": ("model.layers.{i}.mlp.gate_proj.weight", True),
    "layers/mlp/up_proj/kernel": ("model.layers.{i}.mlp.up_proj.weight", True),
    "layers/mlp/down_proj/kernel": ("model.layers.{i}.mlp.down_proj.weight", True),
    **{f"layers/attn/{p}_proj/kernel": (f"model.layers.{{i}}.self_attn.{p}_proj.weight", True) for p in "qkvo"},
    **{f"layers/attn/{p}_proj/bias": (f"model.layers.{{i}}.self_attn.{p}_proj.bias", False) for p in "qkv"},
}


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def param_shapes(cfg: ModelConfig) -> dict[str, jax.ShapeDtypeStruct]:
    """Flat {path: ShapeDtypeStruct} of the parameters `cfg` defines (no memory allocated)."""
    tree = jax.eval_shape(lambda: init_params(cfg))
    return {_path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten(flat: dict[str, Any]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def hf_tensor_names(cfg: ModelConfig) -> Iterator[tuple[str, str, int | None, bool]]:
    """(our path, HF name, layer index or None, transpose) for every tensor of the checkpoint, in export order."""
    for path in param_shapes(cfg):
        template, transpose = _NAME_TABLE[path]
        if "{i}" in template:
            for i in range(cfg.num_layers):
                yield path, template.format(i=i), i, transpose
        else:
            yield path, template, None, transpose


# ---------------------------------------------------------------------------------------------- import

class _CheckpointTensors:
    """name -> tensor across a single file or a sharded checkpoint, each file opened lazily."""

    def __init__(self, model_dir: str):
        self.model_dir = model_dir
        index_path = os.path.join(model_dir, INDEX_FILE)
        single_path = os.path.join(model_dir, SINGLE_FILE)
        self._files: dict[str, SafetensorsFile] = {}
        if os.path.isfile(index_path):
            self.source = index_path
            try:
                with open(index_path, encoding="utf-8") as f:
                    weight_map = json.load(f)["weight_map"]
                if not isinstance(weight_map, dict):
                    raise TypeError("weight_map is not an object")
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
                raise InputError(f"corrupt index: {err}", path=index_path) from None
            self.weight_map = {name: os.path.join(model_dir, shard) for name, shard in weight_map.items()}
        elif os.path.isfile(single_path):
            self.source = single_path
            self.weight_map = {name: single_path for name in self._open(single_path).keys()}
        else:
            raise InputError(f"no weights: neither {SINGLE_FILE} nor {INDEX_FILE} found", path=model_dir)

    def _open(self, path: str) -> SafetensorsFile:
        if path not in self._files:
            self._files[path] = SafetensorsFile(path)
        return self._files[path]

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def get(self, name: str) -> np.ndarray:
        if name not in self.weight_map:
            raise InputError(f"tensor {name!r} missing from the checkpoint", path=self.source)
        tensor_file = self._open(self.weight_map[name])
        if name not in tensor_file.keys():
            raise InputError(f"tensor {name!r} missing from shard (listed in {INDEX_FILE})", path=tensor_file.path)
        return tensor_file.get(name)


def _assemble(tensors: _CheckpointTensors, cfg: ModelConfig, path: str, shape: tuple[int, ...],
              dtype: np.dtype) -> np.ndarray:
    template, transpose = _NAME_TABLE[path]
    stacked = "{i}" in template
    out = np.empty(shape, dtype)
    for i in range(cfg.num_layers) if stacked else [None]:
        name = template.format(i=i)
        tensor = tensors.get(name)
        if transpose:
            tensor = tensor.T
        want = shape[1:] if stacked else shape
        if tuple(tensor.shape) != tuple(want):
            raise InputError(f"tensor {name!r} has shape {tuple(tensor.T.shape if transpose else tensor.shape)}, "
                             f"config.json implies {tuple(want[::-1] if transpose else want)}",
                             path=tensors.weight_map[name])
        target = out[i] if stacked else out
        target[...] = tensor.astype(dtype)
    return out


def load_pretrained(model_dir: str | os.PathLike, dtype: str = "float32", *, mesh=None, shardings=None,
                    compute_dtype: str | None = None, **config_overrides) -> tuple[ModelConfig, dict]:
    """Load a Hugging Face checkpoint directory. Returns (cfg, params).

    dtype: parameter dtype ("float32" or "bfloat16"); compute_dtype defaults to the same.
    mesh: place each parameter straight onto this mesh with the partition rules of `reasonrank_jax.sharding`
    (or pass `shardings`, a function path -> jax.sharding.Sharding).
    """
    model_dir = os.fspath(model_dir)
    cfg = ModelConfig.from_pretrained_dir(model_dir, param_dtype=dtype, dtype=compute_dtype or dtype,
                                          **config_overrides)
    tensors = _CheckpointTensors(model_dir)
    if mesh is not None and shardings is None:
        from reasonrank_jax.sharding import param_sharding
        shardings = lambda path, shape: param_sharding(mesh, path, shape)  # noqa: E731
    flat = {}
    for path, leaf in param_shapes(cfg).items():
        host = _assemble(tensors, cfg, path, leaf.shape, np.dtype(leaf.dtype))
        if shardings is None:
            flat[path] = jax.device_put(host)
        else:
            sharding = shardings(path, leaf.shape)
            flat[path] = jax.make_array_from_callback(host.shape, sharding, lambda index, h=host: h[index])
        del host
    return cfg, unflatten(flat)


# ---------------------------------------------------------------------------------------------- export

def parse_size(size: int | str) -> int:
    """'5GB' -> 5e9 bytes, '2GiB' -> 2 * 2**30, '500KB', or a plain integer of bytes."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)?\s*", size.upper())
    if not match:
        raise InputError(f"cannot parse size {size!r} (e.g. '5GB', '500MB', '2GiB')", field="max_shard_size")
    number, unit = float(match.group(1)), match.group(2) or "B"
    base = 1024 if "I" in unit else 1000
    power = "BKMGT".index(unit[0]) if unit[0] in "KMGT" else 0
    return int(number * base**power)


def _host_dtype(name: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def save_pretrained(cfg: ModelConfig, params: dict, out_dir: str | os.PathLike, max_shard_size: int | str = "5GB",
                    *, dtype: str | None = None, tokenizer_dir: str | os.PathLike | None = None) -> list[str]:
    """Write a checkpoint that transformers' `from_pretrained` (and vLLM) load. Returns the weight files written.

    dtype: dtype of the saved tensors (default: the parameters' own). Tied embeddings write no lm_head.
    One shard -> `model.safetensors`; several -> `model-0000k-of-0000n.safetensors` + `model.safetensors.index.json`.
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    flat = {_path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    expected = param_shapes(cfg)
    if set(flat) != set(expected):
        raise ValueError(f"params do not match cfg: missing {sorted(set(expected) - set(flat))}, "
                         f"unexpected {sorted(set(flat) - set(expected))}")
    dtype = dtype or str(np.dtype(next(iter(flat.values())).dtype))
    save_dtype = _host_dtype(dtype)
    limit = parse_size(max_shard_size)

    # Plan shards from shapes alone, so the file names (k-of-n) are known before anything is written.
    entries = list(hf_tensor_names(cfg))
    shard_of, sizes, current = {}, [0], 0
    for path, name, layer, _ in entries:
        shape = expected[path].shape[1:] if layer is not None else expected[path].shape
        nbytes = int(np.prod(shape)) * save_dtype.itemsize
        if sizes[current] and sizes[current] + nbytes > limit:
            current += 1
            sizes.append(0)
        shard_of[name] = current
        sizes[current] += nbytes
    num_shards = len(sizes)
    file_names = ([SINGLE_FILE] if num_shards == 1 else
                  [f"model-{k + 1:05d}-of-{num_shards:05d}.safetensors" for k in range(num_shards)])
    for stale in os.listdir(out_dir):  # an earlier export with another shard count must not leave files behind
        if stale.endswith(".safetensors") or stale == INDEX_FILE:
            os.remove(os.path.join(out_dir, stale))

    # Fill shards parameter by parameter (one stacked parameter on the host at a time); write each shard when full.
    pending: list[dict[str, np.ndarray]] = [{} for _ in range(num_shards)]
    remaining = [sum(1 for n in shard_of if shard_of[n] == k) for k in range(num_shards)]
    by_path: dict[str, list[tuple[str, int | None, bool]]] = {}
    for path, name, layer, transpose in entries:
        by_path.setdefault(path, []).append((name, layer, transpose))
    for path, tensor_list in by_path.items():
        host = np.asarray(jax.device_get(flat[path])).astype(save_dtype)
        for name, layer, transpose in tensor_list:
            tensor = host[layer] if layer is not None else host
            k = shard_of[name]
            pending[k][name] = np.ascontiguousarray(tensor.T if transpose else tensor)
            remaining[k] -= 1
            if remaining[k] == 0:
                ordered = {n: pending[k][n] for n in sorted(pending[k])}
                write_safetensors(os.path.join(out_dir, file_names[k]), ordered, metadata={"format": "pt"})
                pending[k] = {}
        del host

    if num_shards > 1:
        index = {"metadata": {"total_size": sum(sizes)},
                 "weight_map": {name: file_names[shard_of[name]] for name in sorted(shard_of)}}
        with open(os.path.join(out_dir, INDEX_FILE), "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2)
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg.to_hf_dict(torch_dtype=dtype), f, indent=2, sort_keys=True)
    _write_generation_config(cfg, out_dir)
    if tokenizer_dir is not None:
        copy_tokenizer_files(tokenizer_dir, out_dir)
    return file_names


def _write_generation_config(cfg: ModelConfig, out_dir: str) -> None:
    extra = cfg.extra
    generation = {"_from_model_config": True}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if extra.get(key) is not None:
            generation[key] = extra[key]
    with open(os.path.join(out_dir, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump(generation, f, indent=2)


def copy_tokenizer_files(tokenizer_dir: str | os.PathLike, out_dir: str) -> list[str]:
    """Copy the tokenizer (and a source generation_config.json, whose sampling defaults users keep)."""
    tokenizer_dir = os.fspath(tokenizer_dir)
    if not os.path.isdir(tokenizer_dir):
        raise InputError("tokenizer directory not found", path=tokenizer_dir)
    copied = []
    for name in TOKENIZER_FILES:
        source = os.path.join(tokenizer_dir, name)
        if os.path.isfile(source) and os.path.abspath(source) != os.path.abspath(os.path.join(out_dir, name)):
            shutil.copyfile(source, os.path.join(out_dir, name))
            copied.append(name)
    if not any(n.startswith("tokenizer") or n == "vocab.json" for n in copied):
        raise InputError("no tokenizer files found (tokenizer.json, tokenizer.model, vocab.json, ...)",
                         path=tokenizer_dir)
    return copied


def checkpoint_summary(model_dir: str | os.PathLike) -> dict[str, Any]:
    """Config, parameter count and weight files of a checkpoint, read from headers only (for `model-info`)."""
    model_dir = os.fspath(model_dir)
    cfg = ModelConfig.from_pretrained_dir(model_dir)
    tensors = _CheckpointTensors(model_dir)
    files: dict[str, dict[str, int]] = {}
    num_params = 0
    for name, path in tensors.weight_map.items():
        shard = tensors._open(path)
        if name not in shard.keys():
            raise InputError(f"tensor {name!r} missing from shard (listed in {INDEX_FILE})", path=path)
        count = int(np.prod(shard.shape(name), dtype=np.int64))
        num_params += count
        entry = files.setdefault(os.path.basename(path), {"tensors": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["bytes"] += count * shard.dtype(name).itemsize
    missing = [name for _, name, _, _ in hf_tensor_names(cfg) if name not in tensors]
    if missing:
        raise InputError(f"{len(missing)} tensors missing from the checkpoint, e.g. {missing[0]!r}",
                         path=tensors.source)
    return {"config": cfg, "num_params": num_params, "files": files}

