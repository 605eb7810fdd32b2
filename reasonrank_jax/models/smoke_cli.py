"""`reasonrank-jax smoke`: build a tiny random model, export it in Hugging Face format, reload it, print parity.

A first check on a fresh machine that JAX, the decoder and checkpoint I/O work; with torch installed (the [test]
extra) it also loads the export with transformers and compares logits.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile

from reasonrank_jax.config import ConfigCheckError, option


@dataclasses.dataclass(frozen=True)
class SmokeConfig:
    model_type: str = option("qwen2", choices=("qwen2", "qwen3", "llama"), help="architecture of the tiny model")
    out: str | None = option(metavar="DIR", help="export directory: new, empty, or an earlier smoke export "
                                                 "(default: a temporary directory)")
    overwrite: bool = option(False, help="allow --out to be a directory holding other files (same-named files "
                                         "are replaced)")
    layers: int = option(2, min=1, help="decoder layers")
    hidden: int = option(64, min=16, help="hidden size, a multiple of 16 (heads of 16 dims, at least 2)")
    max_shard_size: str = option("100KB", help="small on purpose: exercises sharded export (e.g. 100KB, 5GB)")
    seed: int = option(0, min=0)

    def check(self) -> None:
        if self.hidden % 16:
            raise ConfigCheckError("hidden", f"must be a multiple of 16, got {self.hidden}")


CONFIG = SmokeConfig


def main(args: SmokeConfig) -> int:
    import jax
    import numpy as np

    from reasonrank_jax.models import ModelConfig, forward, init_params, load_pretrained, save_pretrained
    from reasonrank_jax.models.hf_io import parse_size
    from reasonrank_jax.outputs import OutputDir

    out = OutputDir(args.out, "smoke", args.overwrite) if args.out else None
    parse_size(args.max_shard_size)  # bad input fails here, before anything is written

    heads = max(2, args.hidden // 16)
    cfg = ModelConfig(model_type=args.model_type, vocab_size=256, hidden_size=args.hidden, num_layers=args.layers,
                      num_heads=heads, num_kv_heads=heads // 2, head_dim=args.hidden // heads,
                      intermediate_size=2 * args.hidden, qkv_bias=args.model_type == "qwen2",
                      qk_norm=args.model_type == "qwen3", rope_theta=1e6,
                      extra_json=json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    params = init_params(cfg, jax.random.PRNGKey(args.seed))
    out_dir = args.out or tempfile.mkdtemp(prefix="reasonrank-smoke-")
    if out is not None:
        out.record_config(args)
    files = save_pretrained(cfg, params, out_dir, max_shard_size=args.max_shard_size)
    print(f"exported {cfg.model_type} ({cfg.num_params():,} parameters) to {out_dir}: {len(files)} weight file(s)")

    rng = np.random.default_rng(args.seed)
    ids = rng.integers(0, cfg.vocab_size, (2, 12))
    mask = np.ones_like(ids)
    mask[1, :4] = 0  # left padding
    logits = np.asarray(forward(cfg, params, ids, mask))
    _, reloaded = load_pretrained(out_dir)
    again = np.asarray(forward(cfg, reloaded, ids, mask))
    real = mask.astype(bool)
    print(f"reasonrank-jax reload: max |logits diff| = {np.abs(logits - again)[real].max():.3e}")
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:
        print("transformers parity skipped: torch is not installed (pip install -e '.[test]')")
        return 0
    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        reference = model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    error = np.abs(logits - reference)[real].max()
    print(f"transformers parity: max |logits diff| = {error:.3e} ({'ok' if error <= 1e-4 else 'FAILED'})")
    return 0 if error <= 1e-4 else 1
