"""`reasonrank-jax model-info DIR`: config, parameter count and shards of a Hugging Face checkpoint."""

from __future__ import annotations

import dataclasses
import json

from reasonrank_jax.config import option


@dataclasses.dataclass(frozen=True)
class ModelInfoConfig:
    model_dir: str | None = option(positional=True, required=True, metavar="DIR",
                                   help="Hugging Face checkpoint directory (config.json + safetensors)")
    json: bool = option(False, help="print one JSON object instead of text")


CONFIG = ModelInfoConfig


def main(args) -> int:
    from reasonrank_jax.models.hf_io import checkpoint_summary

    summary = checkpoint_summary(args.model_dir)
    cfg = summary["config"]
    fields = {k: v for k, v in dataclasses.asdict(cfg).items()
              if k not in ("extra_json", "dtype", "param_dtype", "remat_policy")}
    if args.json:
        print(json.dumps({"config": fields, "num_params": summary["num_params"], "files": summary["files"]}))
        return 0
    print(f"{args.model_dir}: {cfg.model_type}, {summary['num_params']:,} parameters")
    for key, value in fields.items():
        print(f"  {key:24s} {value}")
    print("weight files:")
    for name, info in summary["files"].items():
        print(f"  {name}  {info['tensors']} tensors, {info['bytes'] / 1e6:.1f} MB")
    return 0
