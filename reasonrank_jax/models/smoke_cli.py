"""`reasonrank-jax smoke`: build a tiny random model, export it in Hugging Face format, reload it, print parity.

A first check on a fresh machine that JAX, the decoder and checkpoint I/O work; with torch installed (the [test]
extra) it also loads the export with transformers and compares logits.
"""

from __future__ import annotations

import argparse
import json
import tempfile


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-type", choices=("qwen2", "qwen3", "llama"), default="qwen2")
    parser.add_argument("--out", help="export directory (default: a temporary directory)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--max-shard-size", default="100KB", help="small on purpose: exercises sharded export")
    parser.add_argument("--seed", type=int, default=0)


def main(args) -> int:
    import jax
    import numpy as np

    from reasonrank_jax.models import ModelConfig, forward, init_params, load_pretrained, save_pretrained

    heads = max(2, args.hidden // 16)
    cfg = ModelConfig(model_type=args.model_type, vocab_size=256, hidden_size=args.hidden, num_layers=args.layers,
                      num_heads=heads, num_kv_heads=heads // 2, head_dim=args.hidden // heads,
                      intermediate_size=2 * args.hidden, qkv_bias=args.model_type == "qwen2",
                      qk_norm=args.model_type == "qwen3", rope_theta=1e6,
                      extra_json=json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    params = init_params(cfg, jax.random.PRNGKey(args.seed))
    out_dir = args.out or tempfile.mkdtemp(prefix="reasonrank-smoke-")
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
