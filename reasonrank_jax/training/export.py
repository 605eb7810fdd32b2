"""`reasonrank-jax export RUN_DIR [--step N] --out HF_DIR`: a trained state as a Hugging Face checkpoint.

Writes sharded safetensors + `model.safetensors.index.json`, config.json, generation_config.json and the base
model's tokenizer files; LoRA adapters are merged (W + alpha / rank · A·B). `--adapter DIR` also writes the adapters
as a PEFT adapter directory (adapter_config.json + adapter_model.safetensors). The latest complete checkpoint by
default.
"""

from __future__ import annotations

import dataclasses
import json
import os

from reasonrank_jax.config import option
from reasonrank_jax.errors import InputError
from reasonrank_jax.training.sections import DTYPES


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    run_dir: str | None = option(positional=True, required=True, metavar="RUN_DIR",
                                 help="a `train sft` or `train grpo` run directory (config.yaml + checkpoints/)")
    out: str | None = option(required=True, metavar="HF_DIR", help="output directory: new, empty, or an earlier "
                                                                    "export's")
    step: int | None = option(min=0, help="checkpoint step (default: the latest complete one)")
    dtype: str | None = option(choices=DTYPES, help="dtype of the saved tensors (default: the parameters' own)")
    adapter: str | None = option(metavar="DIR", help="LoRA runs: also write a PEFT adapter directory here")
    max_shard_size: str = option("5GB", help="largest safetensors shard")
    overwrite: bool = option(False, help="allow --out (and --adapter) to be directories holding other files")


CONFIG = ExportConfig


def peft_tensors(lora, num_layers: int) -> dict:
    """PEFT names and layouts: lora_A.weight [rank, in], lora_B.weight [out, rank], one per layer."""
    import numpy as np

    from reasonrank_jax.models.lora import LORA_TARGETS

    hf_module = {"attn": "self_attn", "mlp": "mlp"}
    tensors = {}
    for module, projection in LORA_TARGETS.values():
        factors = lora["layers"].get(module, {}).get(projection)
        if factors is None:
            continue
        a, b = np.asarray(factors["lora_a"], np.float32), np.asarray(factors["lora_b"], np.float32)
        for i in range(num_layers):
            prefix = f"base_model.model.model.layers.{i}.{hf_module[module]}.{projection}"
            tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(a[i].T)
            tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b[i].T)
    return tensors


def write_peft_adapter(out_dir: str, lora, cfg, rank: int, alpha: float, base_path: str) -> None:
    from reasonrank_jax.models.lora import PEFT_MODULES, lora_targets_of
    from reasonrank_jax.models.safetensors_io import write_safetensors
    from reasonrank_jax.outputs import atomic_write

    write_safetensors(os.path.join(out_dir, "adapter_model.safetensors"), peft_tensors(lora, cfg.num_layers))
    adapter_config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
                      "target_modules": [PEFT_MODULES[t] for t in lora_targets_of(lora)], "lora_dropout": 0.0,
                      "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "inference_mode": True,
                      "base_model_name_or_path": os.path.abspath(base_path)}
    atomic_write(os.path.join(out_dir, "adapter_config.json"), json.dumps(adapter_config, indent=2))


def main(args: ExportConfig) -> int:
    import jax

    from reasonrank_jax.models.hf_io import parse_size, save_pretrained
    from reasonrank_jax.models.lora import merge_lora
    from reasonrank_jax.outputs import OutputDir
    from reasonrank_jax.sharding import make_mesh
    from reasonrank_jax.training import setup

    config = setup.read_run_config(args.run_dir)
    out = OutputDir(args.out, "export", args.overwrite)
    adapter = OutputDir(args.adapter, "export", args.overwrite, field="--adapter") if args.adapter else None
    parse_size(args.max_shard_size)
    if adapter and config.lora.rank == 0:
        raise InputError("the run is full fine-tuning: there is no adapter to write", field="--adapter")
    prepared, state, step = setup.restore_run(args.run_dir, make_mesh(), args.step)
    params = merge_lora(state.params, state.lora, prepared.spec.lora_scale) if prepared.use_lora else state.params
    params = jax.device_get(params)
    out.record_config(args)
    files = save_pretrained(prepared.spec.cfg, params, args.out, max_shard_size=args.max_shard_size,
                            dtype=args.dtype, tokenizer_dir=setup.tokenizer_dir(config.model))
    print(f"exported step {step} of {args.run_dir} to {args.out}: {len(files)} weight file(s)")
    if adapter:
        adapter.record_config(args)
        write_peft_adapter(args.adapter, jax.device_get(state.lora), prepared.spec.cfg, config.lora.rank,
                           config.lora.alpha, config.model.path)
        print(f"wrote the PEFT adapter to {args.adapter}")
    return 0
