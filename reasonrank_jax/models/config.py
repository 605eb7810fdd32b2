"""ModelConfig: the decoder's hyper-parameters, read from and written back to a Hugging Face ``config.json``.

Supported backbones: ``qwen2`` (Qwen2/Qwen2.5: q/k/v bias), ``qwen3`` (RMSNorm on q and k per head) and ``llama``
(optionally llama3 rope scaling). Anything the decoder does not implement fails loudly here, at load time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from typing import Any

from reasonrank_jax.errors import InputError

SUPPORTED_MODEL_TYPES = ("qwen2", "qwen3", "llama")
ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
_SIZE_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                "intermediate_size", "max_position_embeddings")

# Keys that ModelConfig owns; every other key of config.json is kept verbatim in `extra_json` and written back.
_OWNED_KEYS = {
    "model_type", "architectures", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "intermediate_size", "rms_norm_eps", "rope_theta", "rope_scaling",
    "rope_parameters", "attention_bias", "tie_word_embeddings", "max_position_embeddings", "torch_dtype", "dtype",
    "hidden_act", "use_sliding_window", "sliding_window", "max_window_layers", "layer_types", "mlp_bias",
    "attention_dropout", "transformers_version", "_name_or_path",
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hashable (usable as a static jit argument). Field names follow the equations, not HF's spelling."""

    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # e.g. (("rope_type","llama3"),("factor",8.0),...)
    qkv_bias: bool = False  # Qwen2
    qk_norm: bool = False  # Qwen3
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    # Execution settings (not part of the checkpoint).
    dtype: str = "float32"  # compute dtype of activations
    param_dtype: str = "float32"  # dtype parameters are stored in
    remat_policy: str = "none"  # none | full | dots | dots_no_batch
    checkpoint_dtype: str = "bfloat16"  # torch_dtype recorded in config.json
    extra_json: str = "{}"  # the rest of config.json (token ids, ...), kept verbatim for export

    def __post_init__(self):
        bad_sizes = [f"{name}={getattr(self, name)!r}" for name in _SIZE_FIELDS
                     if not _is_positive_int(getattr(self, name))]
        if bad_sizes:
            raise ValueError(f"sizes must be positive integers: {', '.join(bad_sizes)}")
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not supported (supported: {SUPPORTED_MODEL_TYPES})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy {self.remat_policy!r} not in {REMAT_POLICIES}")

    @property
    def rope_scaling_dict(self) -> dict[str, Any] | None:
        return dict(self.rope_scaling) if self.rope_scaling else None

    @property
    def extra(self) -> dict[str, Any]:
        return json.loads(self.extra_json)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        d, f, v, h = self.hidden_size, self.intermediate_size, self.vocab_size, self.head_dim
        q, kv = self.num_heads * h, self.num_kv_heads * h
        attn = d * q + 2 * d * kv + q * d + (q + 2 * kv if self.qkv_bias else 0) + (2 * h if self.qk_norm else 0)
        per_layer = attn + 3 * d * f + 2 * d
        return v * d * (1 if self.tie_word_embeddings else 2) + self.num_layers * per_layer + d

    # ------------------------------------------------------------------ Hugging Face config.json
    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], source: str = "config.json", **overrides) -> "ModelConfig":
        """Every key read is type- and range-checked here; a bad one raises InputError naming `source` and the key."""
        read = _ConfigJson(hf, source)
        model_type = read.value("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            read.fail("model_type", f"model_type {model_type!r} is not supported "
                                    f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
        _reject_unimplemented(read)
        rope_theta, rope_scaling = _read_rope(read)
        hidden = read.positive_int("hidden_size")
        num_heads = read.positive_int("num_attention_heads")
        num_kv_heads = read.positive_int("num_key_value_heads", num_heads)
        if num_heads % num_kv_heads:
            read.fail("num_key_value_heads", f"{num_kv_heads} does not divide num_attention_heads {num_heads}")
        extra = {k: v for k, v in hf.items() if k not in _OWNED_KEYS}
        fields = dict(
            model_type=model_type,
            vocab_size=read.positive_int("vocab_size"),
            hidden_size=hidden,
            num_layers=read.positive_int("num_hidden_layers"),
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=_read_head_dim(read, hidden, num_heads),
            intermediate_size=read.positive_int("intermediate_size"),
            rms_norm_eps=read.positive_number("rms_norm_eps", 1e-6),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            # Qwen2 always has q/k/v biases (its config has no attention_bias key).
            qkv_bias=model_type == "qwen2" or read.flag("attention_bias", False),
            qk_norm=model_type == "qwen3",
            tie_word_embeddings=read.flag("tie_word_embeddings", False),
            max_position_embeddings=read.positive_int("max_position_embeddings", 32768),
            checkpoint_dtype=read.string("torch_dtype", None) or read.string("dtype", "bfloat16"),
            extra_json=json.dumps(extra, sort_keys=True),
        )
        fields.update(overrides)
        try:
            return cls(**fields)
        except ValueError as err:  # an override (remat_policy, ...) that __post_init__ rejects
            raise InputError(str(err), path=source) from None

    @classmethod
    def from_pretrained_dir(cls, model_dir: str | os.PathLike, **overrides) -> "ModelConfig":
        path = os.path.join(os.fspath(model_dir), "config.json")
        if not os.path.isfile(path):
            raise InputError("not found (a Hugging Face checkpoint directory needs config.json)", path=path)
        try:
            with open(path, encoding="utf-8") as f:
                hf = json.load(f)
        except OSError as err:
            raise InputError(f"cannot read: {err.strerror}", path=path) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"not valid JSON: {err}", path=path) from None
        if not isinstance(hf, dict):
            raise InputError("expected a JSON object", path=path)
        return cls.from_hf_dict(hf, source=path, **overrides)

    def to_hf_dict(self, torch_dtype: str | None = None) -> dict[str, Any]:
        torch_dtype = torch_dtype or self.checkpoint_dtype
        rope_parameters = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling:
            rope_parameters = {**self.rope_scaling_dict, "rope_theta": self.rope_theta}
        hf = dict(self.extra)
        hf.update({
            "architectures": [ARCHITECTURES[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            # Both spellings: rope_theta/rope_scaling for vLLM and transformers 4, rope_parameters for transformers 5.
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling_dict,
            "rope_parameters": rope_parameters,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "torch_dtype": torch_dtype,
            "dtype": torch_dtype,
        })
        if self.model_type in ("qwen2", "qwen3"):
            hf["use_sliding_window"] = False
        if self.model_type in ("llama", "qwen3"):
            hf["attention_bias"] = self.qkv_bias
        if self.model_type == "llama":
            hf["mlp_bias"] = False
        return hf


_REQUIRED = object()  # the default of a key config.json must have


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def _positive_float(value: Any) -> float | None:
    """float(value) for a finite, positive JSON number; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond the float range
        return None
    return number if 0 < number < math.inf else None


class _ConfigJson:
    """Checked reads of one JSON object of config.json: each failure names the file and the key.

    A null value counts as absent, as in transformers. Integers must be JSON integers: 64.0 is refused like 64.5,
    because transformers' strict configs refuse it too, and a checkpoint accepted here must load there as well.
    """

    def __init__(self, obj: dict[str, Any], source: str, prefix: str = ""):
        self.obj, self.source, self.prefix = obj, source, prefix

    def fail(self, key: str, message: str):
        raise InputError(message, path=self.source, field=self.prefix + key)

    def _present(self, key: str, default: Any) -> bool:
        if self.obj.get(key) is not None:
            return True
        if default is _REQUIRED:
            self.fail(key, "missing required field")
        return False

    def value(self, key: str, default: Any = _REQUIRED) -> Any:
        return self.obj[key] if self._present(key, default) else default

    def positive_int(self, key: str, default: Any = _REQUIRED) -> int:
        if not self._present(key, default):
            return default
        if not _is_positive_int(self.obj[key]):
            self.fail(key, f"expected a positive integer, got {self.obj[key]!r}")
        return self.obj[key]

    def positive_number(self, key: str, default: Any = _REQUIRED) -> float:
        if not self._present(key, default):
            return default
        number = _positive_float(self.obj[key])
        if number is None:
            self.fail(key, f"expected a positive number, got {self.obj[key]!r}")
        return number

    def flag(self, key: str, default: Any = _REQUIRED) -> bool:
        if not self._present(key, default):
            return default
        if not isinstance(self.obj[key], bool):
            self.fail(key, f"expected true or false, got {self.obj[key]!r}")
        return self.obj[key]

    def string(self, key: str, default: Any = _REQUIRED) -> str:
        if not self._present(key, default):
            return default
        if not isinstance(self.obj[key], str):
            self.fail(key, f"expected a string, got {self.obj[key]!r}")
        return self.obj[key]

    def mapping(self, key: str) -> dict[str, Any]:
        if not self._present(key, {}):
            return {}
        if not isinstance(self.obj[key], dict):
            self.fail(key, f"expected a JSON object, got {self.obj[key]!r}")
        return self.obj[key]


def _reject_unimplemented(read: _ConfigJson) -> None:
    """Features the decoder lacks fail at load time rather than as wrong logits."""
    act = read.value("hidden_act", "silu")
    if act != "silu":
        read.fail("hidden_act", f"hidden_act {act!r} is not supported (only silu)")
    if read.flag("use_sliding_window", False):
        read.fail("use_sliding_window",
                  "sliding-window attention is switched on; reasonrank-jax implements full attention only")
    layer_types = read.value("layer_types", [])
    if not isinstance(layer_types, list):
        read.fail("layer_types", f"expected a list, got {layer_types!r}")
    unsupported = sorted({str(t) for t in layer_types} - {"full_attention"})
    if unsupported:
        read.fail("layer_types", f"layer_types other than full_attention are not supported: {unsupported}")
    if read.flag("mlp_bias", False):
        read.fail("mlp_bias", "mlp_bias=true is not supported")


def _read_head_dim(read: _ConfigJson, hidden: int, num_heads: int) -> int:
    if read.value("head_dim", None) is None:
        # Derived, so it must be exact: a floor would silently give a model of another shape than the config says.
        if hidden % num_heads:
            read.fail("hidden_size", f"{hidden} is not a multiple of num_attention_heads {num_heads} "
                                     "and there is no head_dim")
        head_dim = hidden // num_heads
    else:
        head_dim = read.positive_int("head_dim")
    if head_dim % 2:
        read.fail("head_dim", f"head_dim {head_dim} is odd; rotary embeddings rotate pairs of dimensions")
    return head_dim


def _read_rope(read: _ConfigJson) -> tuple[float, tuple[tuple[str, Any], ...] | None]:
    """(rope_theta, scaling) from rope_parameters (transformers 5) over the legacy rope_theta / rope_scaling."""
    legacy, parameters = read.mapping("rope_scaling"), read.mapping("rope_parameters")
    rope = _ConfigJson({**legacy, **parameters}, read.source,
                       prefix="rope_parameters." if parameters else "rope_scaling.")
    theta = rope.positive_number("rope_theta", None) or read.positive_number("rope_theta", 10000.0)
    rope_type = rope.value("rope_type", rope.value("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type not in ("llama3", "linear"):
        rope.fail("rope_type", f"rope type {rope_type!r} is not supported (default, linear, llama3)")
    scaling = {k: v for k, v in rope.obj.items() if k not in ("rope_theta", "type")}
    scaling.update(rope_type=rope_type, factor=rope.positive_number("factor"))
    if rope_type == "llama3":
        low, high = rope.positive_number("low_freq_factor"), rope.positive_number("high_freq_factor")
        if high <= low:  # llama3 interpolates between the two: (x - low) / (high - low)
            rope.fail("high_freq_factor", f"{high:g} must be greater than low_freq_factor {low:g}")
        scaling.update(low_freq_factor=low, high_freq_factor=high,
                       original_max_position_embeddings=rope.positive_int("original_max_position_embeddings"))
    return theta, tuple(sorted(scaling.items()))


def rope_inv_freq(cfg: ModelConfig):
    """Inverse frequencies [head_dim/2] as numpy float64, with linear or llama3 scaling applied."""
    import numpy as np

    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, cfg.head_dim, 2, dtype=np.float64) / cfg.head_dim))
    scaling = cfg.rope_scaling_dict
    if not scaling:
        return inv_freq
    factor = float(scaling["factor"])
    if scaling["rope_type"] == "linear":
        return inv_freq / factor
    # llama3: long wavelengths are divided by `factor`, short ones kept, the band between interpolated.
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_context = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= old_context / high) & (wavelen <= old_context / low)
    return np.where(is_medium, smoothed, scaled)
