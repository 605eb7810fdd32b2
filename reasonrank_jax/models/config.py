"""ModelConfig: the decoder's hyper-parameters, read from and written back to a Hugging Face ``config.json``.

Supported backbones: ``qwen2`` (Qwen2/Qwen2.5: q/k/v bias), ``qwen3`` (RMSNorm on q and k per head) and ``llama``
(optionally llama3 rope scaling). Anything the decoder does not implement fails loudly here, at load time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from reasonrank_jax.errors import InputError

SUPPORTED_MODEL_TYPES = ("qwen2", "qwen3", "llama")
ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")

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
        def need(key):
            if key not in hf or hf[key] is None:
                raise InputError("missing required field", path=source, field=key)
            return hf[key]

        model_type = need("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise InputError(f"model_type {model_type!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})",
                             path=source, field="model_type")
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise InputError(f"hidden_act {act!r} is not supported (only silu)", path=source, field="hidden_act")
        if hf.get("use_sliding_window"):
            raise InputError("sliding-window attention is switched on; reasonrank-jax implements full attention only",
                             path=source, field="use_sliding_window")
        layer_types = hf.get("layer_types") or []
        if any(t != "full_attention" for t in layer_types):
            raise InputError(f"layer_types other than full_attention are not supported: {sorted(set(layer_types))}",
                             path=source, field="layer_types")
        if hf.get("mlp_bias"):
            raise InputError("mlp_bias=true is not supported", path=source, field="mlp_bias")

        num_heads = int(need("num_attention_heads"))
        hidden = int(need("hidden_size"))
        head_dim = hf.get("head_dim") or hidden // num_heads
        rope = dict(hf.get("rope_parameters") or {})
        legacy_scaling = hf.get("rope_scaling")
        if legacy_scaling:
            rope = {**dict(legacy_scaling), **rope}
        rope_theta = float(rope.pop("rope_theta", hf.get("rope_theta", 10000.0)))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        rope.pop("type", None)
        if rope_type == "default":
            scaling = None
        elif rope_type in ("llama3", "linear"):
            rope["rope_type"] = rope_type
            for key in ("factor",) + (("low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
                                      if rope_type == "llama3" else ()):
                if key not in rope:
                    raise InputError(f"{rope_type} rope scaling needs {key!r}", path=source, field="rope_scaling")
            scaling = tuple(sorted(rope.items()))
        else:
            raise InputError(f"rope type {rope_type!r} is not supported (default, linear, llama3)",
                             path=source, field="rope_scaling")
        if model_type == "qwen2":
            qkv_bias = True
        else:
            qkv_bias = bool(hf.get("attention_bias", False))
        extra = {k: v for k, v in hf.items() if k not in _OWNED_KEYS}
        fields = dict(
            model_type=model_type,
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            num_layers=int(need("num_hidden_layers")),
            num_heads=num_heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
            head_dim=int(head_dim),
            intermediate_size=int(need("intermediate_size")),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=scaling,
            qkv_bias=qkv_bias,
            qk_norm=model_type == "qwen3",
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
            checkpoint_dtype=str(hf.get("torch_dtype") or hf.get("dtype") or "bfloat16"),
            extra_json=json.dumps(extra, sort_keys=True),
        )
        fields.update(overrides)
        try:
            return cls(**fields)
        except ValueError as err:
            raise InputError(str(err), path=source) from None

    @classmethod
    def from_pretrained_dir(cls, model_dir: str | os.PathLike, **overrides) -> "ModelConfig":
        path = os.path.join(os.fspath(model_dir), "config.json")
        if not os.path.isfile(path):
            raise InputError("not found (a Hugging Face checkpoint directory needs config.json)", path=path)
        try:
            with open(path, encoding="utf-8") as f:
                hf = json.load(f)
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
