"""Decode throughput: reasonrank-jax `generate` vs transformers' PyTorch `generate`, same random-weight Qwen2 model,
greedy, on this machine's CPU (or, with --device gpu, on its first GPU: JAX's CUDA backend against torch CUDA),
measured side by side in one run. Also the fraction of the memory-bandwidth roofline (weights + KV cache bytes read
per decode step, against a measured copy bandwidth) that our decoder reaches.

    python benchmarks/bench_decode.py [--sizes tiny small] [--batches 1 8 32] [--lengths 64:256 1024:256]
                                      [--device cpu|gpu]

--lengths are PROMPT:NEW token counts. Prints one row per (model, lengths, batch): new tokens/s for both, the ratio,
and the roofline fraction. The machine's load average is printed too: other processes skew torch (whose OpenMP
threads spin-wait) far more than XLA, so compare figures from a quiet machine.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time

import numpy as np

SIZES = {  # hidden, layers, heads, kv heads, intermediate, vocab
    "tiny": (256, 2, 4, 2, 768, 8192),
    "deep": (256, 12, 4, 2, 768, 8192),  # thin and deep: per-layer overhead matters
    "small": (512, 4, 8, 2, 1536, 32000),
    "medium": (1024, 8, 16, 4, 2816, 32000),
    "0.5b": (896, 24, 14, 2, 4864, 151936),  # Qwen2.5-0.5B's shape
    "1.5b": (1536, 28, 12, 2, 8960, 151936),  # Qwen2.5-1.5B's shape
}


def copy_bandwidth_gbs(device: str) -> float:
    """Bytes moved per second by a large copy (read + write), the practical roofline of this machine or GPU."""
    if device == "gpu":
        import torch

        src = torch.ones(256 * 2**20, dtype=torch.float32, device="cuda")  # 1 GiB
        dst, nbytes = torch.empty_like(src), src.numel() * 4

        def copy():
            dst.copy_(src)
            torch.cuda.synchronize()
    else:
        src = np.ones(64 * 2**20, np.float32)  # 256 MiB
        dst, nbytes = np.empty_like(src), src.nbytes

        def copy():
            np.copyto(dst, src)
    copy()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        copy()
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best / 1e9


def build_model(size: str, path: str, device: str):
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    hidden, layers, heads, kv_heads, inter, vocab = SIZES[size]
    config = Qwen2Config(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, intermediate_size=inter, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(path)
    return model.to("cuda" if device == "gpu" else "cpu")


def best_of_interleaved(fns, repeats: int) -> list[float]:
    """Best wall time of each function, the runs interleaved (a, b, a, b, ...) so that both see the same machine:
    this VM's speed drifts by tens of percent over minutes."""
    for fn in fns:
        fn()  # warm-up (compilation for JAX, allocator for torch)
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=list(SIZES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--lengths", nargs="+", default=["64:256", "1024:256"], help="PROMPT:NEW token counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu",
                        help="gpu: JAX's CUDA backend and torch on cuda:0, both fp32 (TF32 off on both sides)")
    args = parser.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cuda" if args.device == "gpu" else "cpu")  # before JAX is imported

    import jax
    import torch

    from reasonrank_jax.inference import generate
    from reasonrank_jax.inference.decode import bucket_length, cache_segments
    from reasonrank_jax.models import decode_params, load_pretrained

    torch.set_num_threads(os.cpu_count() or 1)
    if args.device == "gpu":  # fp32 on both sides: no TF32 shortcuts in either framework's matmuls
        torch.backends.cuda.matmul.allow_tf32 = False
        jax.config.update("jax_default_matmul_precision", "highest")
    bandwidth = copy_bandwidth_gbs(args.device)
    lengths = [tuple(int(n) for n in pair.split(":")) for pair in args.lengths]
    where = torch.cuda.get_device_name() if args.device == "gpu" else f"{os.cpu_count()} cores"
    print(f"machine: {where}, jax {jax.__version__} on {jax.devices()[0].platform}, load average "
          f"{os.getloadavg()[0]:.1f}, copy bandwidth {bandwidth:.1f} GB/s; torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}; greedy, fp32")
    print(f"{'model':8s} {'params':>8s} {'prompt':>6s} {'new':>5s} {'batch':>5s} {'ours tok/s':>11s} {'hf tok/s':>9s} "
          f"{'ratio':>6s} {'roofline':>8s}")
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as path:
            model = build_model(size, path, args.device)
            cfg, params = load_pretrained(path)
            decode_layout = decode_params(params)  # what an engine holds: converted once, not per call
            # bytes of weights a decode step reads: all but the (untied) embedding table, of which it gathers a row
            weight_bytes = (cfg.num_params() - cfg.vocab_size * cfg.hidden_size) * 4
            rng = np.random.default_rng(0)
            for (prompt_len, new_tokens), batch in itertools.product(lengths, args.batches):
                prompts = rng.integers(0, cfg.vocab_size, (batch, prompt_len))
                ids = torch.tensor(prompts, device=model.device)

                def hf():
                    with torch.no_grad():
                        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
                    out.cpu()  # the tokens on the host, as `generate` returns them: waits for the GPU

                ours, theirs = best_of_interleaved(
                    [lambda: generate(cfg, decode_layout, prompts.tolist(), new_tokens, eos_ids=[]), hf],
                    args.repeats)
                new = batch * new_tokens
                # per decode step: all weights once + the cache segment attended at that step, every sequence
                p = bucket_length(prompt_len)
                segments = cache_segments(p, new_tokens)
                slots_read = sum(next(size for size in segments if p + step <= size) for step in range(new_tokens))
                kv_bytes = 2 * cfg.num_layers * batch * cfg.num_kv_heads * cfg.head_dim * 4 * slots_read / new_tokens
                step_time = ours / new_tokens
                roofline = (weight_bytes + kv_bytes) / step_time / 1e9 / bandwidth
                print(f"{size:8s} {cfg.num_params() / 1e6:7.1f}M {prompt_len:6d} {new_tokens:5d} {batch:5d} "
                      f"{new / ours:11.1f} {new / theirs:9.1f} {theirs / ours:5.2f}x {roofline:7.0%}", flush=True)

if __name__ == "__main__":
    main()
