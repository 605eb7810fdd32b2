"""`reasonrank-jax model-info DIR`: config, parameter count and shards of a Hugging Face checkpoint."""

from __future__ import annotations

import argparse
import dataclasses
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", metavar="DIR", help="Hugging Face checkpoint directory (config.json + safetensors)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


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
