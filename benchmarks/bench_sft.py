"""SFT step throughput: reasonrank-jax's jitted `train_step` vs a PyTorch transformers training step and vs Tunix's
`PeftTrainer` step, same random-weight model, same batches, AdamW, fp32, on this machine's CPU, measured side by
side (interleaved) in one run.

    python benchmarks/bench_sft.py [--sizes tiny small] [--batch 8] [--seq 512] [--steps 10] [--repeats 3]
                                   [--model-type qwen2|qwen3] [--tunix-python PATH | --setup-tunix DIR]

Tunix lives in its own virtualenv (it pins safetensors < 0.8 and its own transformers; never the project's .venv):

    python benchmarks/bench_sft.py --setup-tunix ../tunix-venv          # once: creates it, then benchmarks
    python benchmarks/bench_sft.py --tunix-python ../tunix-venv/bin/python

Without either (or with TUNIX_PYTHON unset), Tunix is skipped.

Each model is built with transformers (random weights, `save_pretrained` into a temporary directory) and loaded by
all three from that directory. A step is a full optimizer update on one global batch (no accumulation): forward,
backward, global-norm clip at 1.0 and AdamW (lr 1e-5, weight decay 0.01), float32 everywhere, loss = the
response-only token-mean cross-entropy (response = the second half of each row; no padding).
- ours: `training.sft.jit_train_step` on a 1-device mesh (the `train sft` step; state donated), no remat,
  `logits_chunk` 1024 (the default of `train sft`), the output head on the response window only (as `train sft`:
  data/stream.py `response_window`; here the second half of each row).
- torch: `model.train()`, `model(input_ids, labels=...)` (labels -100 on the prompt half: the same loss),
  `loss.backward()`, `clip_grad_norm_`, `torch.optim.AdamW`; the default thread count.
- tunix: `benchmarks/tunix_worker.py` in Tunix's virtualenv, a subprocess answering "run N" with per-step times.
Compilation and warm-up (2 steps each; the first on batch 0 from the same fresh weights, whose losses are compared)
stay outside the timings. Each repeat then runs a block of --steps steps of each system in turn (the order rotated
per repeat), every step blocked on its loss; tokens/s = batch·seq / median step time over all timed steps.

Threads: XLA:CPU's and torch's intra-op pools both use every core of the machine (nproc), and the benchmark
removes --xla_force_host_platform_device_count from XLA_FLAGS (tests set 8 virtual devices; a benchmark of one CPU
device must not split it). FLOPs per step: 6·N·tokens (N = parameters less the input embedding table) plus the
attention's 12·layers·seq·heads·head_dim per token (the masked half included, as all three compute it); "of peak"
is our achieved FLOP/s over the best fp32 matmul rate seen (torch.mm 2048³; XLA's dot reaches the same).

Contention: on a shared machine other processes' load skews torch far more than XLA (torch's OpenMP regions end in
barriers, and a descheduled thread stalls every one of them: with ~1.4 cores of 2 busy elsewhere, the tiny model's
8 x 512 step took 4.6 s against 1.2 s on the quiet machine, while ours went from 1.3 s to 2.5 s), so every
step also records how many cores other processes kept busy meanwhile (from /proc/stat less this process's CPU
time). Each table has an "all" row (every timed step) and a "quiet" row (only steps during which others kept
< 0.25 core busy; the count per system is shown): compare systems on the quiet row when it has enough steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from tunix_worker import cpu_snapshot, others_cores  # stdlib only at import: shared by both sides

SIZES = {  # hidden, layers, heads, kv heads, intermediate, vocab (as in bench_decode.py)
    "tiny": (256, 2, 4, 2, 768, 8192),
    "small": (512, 4, 8, 2, 1536, 32000),
    "medium": (1024, 8, 16, 4, 2816, 32000),
    "0.5b": (896, 24, 14, 2, 4864, 151936),  # Qwen2.5-0.5B's shape
}
SYSTEMS = ("ours", "torch", "tunix")
TUNIX_PINS = ["google-tunix==0.1.7", "jax==0.10.2", "jaxlib==0.10.2", "flax==0.12.8", "safetensors<0.8",
              "transformers==5.12.1"]
LR, WEIGHT_DECAY, CLIP_NORM = 1e-5, 0.01, 1.0
LOSS_TOLERANCE = 1e-4
QUIET_CORES = 0.25  # a step is "quiet" when other processes kept fewer cores than this busy on average
WORKER = Path(__file__).resolve().parent / "tunix_worker.py"


def strip_device_count_flag() -> None:
    """One real CPU device: drop the virtual-device flag the tests set (before JAX is imported)."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    os.environ["XLA_FLAGS"] = " ".join(f for f in flags if not f.startswith("--xla_force_host_platform_device_count"))


def setup_tunix(venv: str) -> str:
    """Create Tunix's virtualenv at `venv` (if its python is missing) and install the pinned packages; its python."""
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", *TUNIX_PINS], check=True)
    return python


def matmul_gflops(samples: int = 20) -> float:
    """fp32 GFLOP/s of a 2048³ torch.mm, best of `samples`: the practical compute roofline of this CPU (XLA's dot
    reaches the same). Best of many, so that a moment when other processes leave the cores free is caught."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(samples):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * 2048**3 / best / 1e9


def build_model(size: str, model_type: str, path: str):
    """A random-weight transformers model, saved to `path`; returned in train mode, float32."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen3Config

    hidden, layers, heads, kv_heads, inter, vocab = SIZES[size]
    config_cls = Qwen2Config if model_type == "qwen2" else Qwen3Config
    config = config_cls(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        num_key_value_heads=kv_heads, head_dim=hidden // heads, intermediate_size=inter,
                        tie_word_embeddings=False, use_cache=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(path)
    return model.train()


def make_batches(n: int, batch: int, seq: int, vocab: int, seed: int = 0) -> dict:
    """n random batches [n, batch, seq]: every position a real token, the loss on the second half of each row."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(0, vocab, (n, batch, seq)).astype(np.int32)
    loss_mask = np.zeros((n, batch, seq), np.int32)
    loss_mask[:, :, seq // 2:] = 1
    return {"input_ids": input_ids, "loss_mask": loss_mask}


def step_flops(cfg, tokens: int, seq: int) -> float:
    matmul_params = cfg.num_params() - cfg.vocab_size * cfg.hidden_size  # the input embedding is a gather
    attention = 12 * cfg.num_layers * seq * cfg.num_heads * cfg.head_dim
    return (6 * matmul_params + attention) * tokens


class Ours:
    """reasonrank-jax: the `train sft` step (jit_train_step) on a 1-device mesh."""

    def __init__(self, path: str, batches: dict, logits_chunk: int, total_steps: int, remat: str = "none"):
        import dataclasses

        import jax

        from reasonrank_jax.models import load_pretrained
        from reasonrank_jax.sharding import make_mesh
        from reasonrank_jax.training.optim import make_optimizer
        from reasonrank_jax.data.stream import response_window
        from reasonrank_jax.training.sft import StepSpec, batch_shardings, jit_train_step
        from reasonrank_jax.training.state import init_state, state_shardings

        mesh = make_mesh((1, 1, 1), jax.devices()[:1])
        cfg, params = load_pretrained(path, dtype="float32", mesh=mesh)
        self.cfg = cfg = dataclasses.replace(cfg, remat_policy=remat)
        optimizer, schedule = make_optimizer(LR, total_steps, schedule="constant", weight_decay=WEIGHT_DECAY,
                                             clip_norm=CLIP_NORM)
        spec = StepSpec(cfg=cfg, optimizer=optimizer, schedule=schedule, logits_chunk=logits_chunk)
        rng = jax.random.PRNGKey(0)
        abstract = jax.eval_shape(lambda: init_state(params, {}, optimizer, rng))
        shardings = state_shardings(mesh, abstract, optimizer)
        self.state = jax.jit(lambda p: init_state(p, {}, optimizer, rng), out_shardings=shardings)(params)
        self.step_fn = jit_train_step(spec, shardings, mesh)
        sharding = batch_shardings(mesh)
        self.batches = []
        for ids, mask in zip(batches["input_ids"], batches["loss_mask"]):
            start, window = response_window(mask)  # the head runs on the response window only, as in `train sft`
            host = {"input_ids_bt": ids, "attention_mask_bt": np.ones_like(ids), "response_start_b": start,
                    "response_mask_br": window}
            self.batches.append({k: jax.device_put(v[None], sharding[k]) for k, v in host.items()})
        self.cursor = 0
        start = time.perf_counter()
        compiled = self.step_fn.lower(self.state, self.batches[0]).compile()
        self.compile_s = time.perf_counter() - start
        from reasonrank_jax.training.loop import compiled_flops

        self.xla_flops = compiled_flops(compiled)

    def step(self) -> float:
        batch = self.batches[self.cursor % len(self.batches)]
        self.cursor += 1
        self.state, metrics = self.step_fn(self.state, batch)
        return float(metrics["loss"])  # blocks until the step is done


class Torch:
    """transformers + torch: model.train(), labels-masked loss, backward, clip, AdamW."""

    def __init__(self, model, batches: dict):
        import torch

        self.torch, self.model = torch, model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8,
                                           weight_decay=WEIGHT_DECAY)
        self.batches = []
        for ids, mask in zip(batches["input_ids"], batches["loss_mask"]):
            ids = torch.tensor(ids, dtype=torch.long)
            labels = torch.where(torch.tensor(mask, dtype=torch.bool), ids, torch.full_like(ids, -100))
            self.batches.append((ids, torch.ones_like(ids), labels))
        self.cursor = 0

    def step(self) -> float:
        ids, attention, labels = self.batches[self.cursor % len(self.batches)]
        self.cursor += 1
        loss = self.model(input_ids=ids, attention_mask=attention, labels=labels).loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP_NORM)
        self.optimizer.step()
        return float(loss.detach())


class Tunix:
    """Tunix's PeftTrainer step in its own virtualenv: benchmarks/tunix_worker.py over pipes."""

    def __init__(self, python: str, path: str, batches_file: str):
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        self.proc = subprocess.Popen(
            [python, str(WORKER), "--model-dir", path, "--batches", batches_file, "--lr", str(LR),
             "--weight-decay", str(WEIGHT_DECAY), "--clip-norm", str(CLIP_NORM)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            cwd=tempfile.gettempdir())  # not the repo: its reasonrank_jax must not shadow anything
        self.stderr: list[str] = []
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()
        self.ready: dict | None = None

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait()
                tail = "".join(self.stderr[-30:])
                raise RuntimeError(f"tunix worker exited with code {self.proc.returncode}:\n{tail}")
            if line.startswith("{"):
                return json.loads(line)

    def wait_ready(self) -> dict:
        if self.ready is None:
            self.ready = self._read()
        return self.ready

    def run(self, n: int) -> list[tuple[float, float, float]]:
        """(seconds, loss, other processes' cores) of n steps, measured inside the worker."""
        self.proc.stdin.write(f"run {n}\n")
        self.proc.stdin.flush()
        out = []
        while True:
            record = self._read()
            if "done" in record:
                return out
            if "error" in record:
                raise RuntimeError(record["error"])
            out.append((record["seconds"], record["loss"], record["others"]))

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()


def timed_block(system, n: int) -> list[tuple[float, float]]:
    """(seconds, cores busy with other processes meanwhile) of each of n steps."""
    if isinstance(system, Tunix):
        return [(seconds, others) for seconds, _, others in system.run(n)]
    out = []
    for _ in range(n):
        before = cpu_snapshot()
        system.step()
        after = cpu_snapshot()
        out.append((after[0] - before[0], others_cores(before, after)))
    return out


def run_size(size: str, args, tunix_python: str | None) -> dict:
    """Build, warm up, time interleaved; the measurements of one model size."""
    tokens = args.batch * args.seq
    with tempfile.TemporaryDirectory() as path:
        model = build_model(size, args.model_type, path)
        vocab = SIZES[size][5]
        batches = make_batches(args.steps + 1, args.batch, args.seq, vocab)
        batches_file = os.path.join(path, "batches.npz")
        np.savez(batches_file, **batches)
        systems: dict[str, object] = {}
        if tunix_python:  # starts first: it loads and compiles while we do
            systems["tunix"] = Tunix(tunix_python, path, batches_file)
        ours = Ours(path, batches, args.logits_chunk, total_steps=args.repeats * args.steps + 2, remat=args.remat)
        systems["ours"] = ours
        systems["torch"] = Torch(model, batches)
        first = {"ours": ours.step(), "torch": systems["torch"].step()}
        ours.step(), systems["torch"].step()  # second warm-up step: optimizer state allocated, caches warm
        compile_s = {"ours": ours.compile_s}
        if "tunix" in systems:
            ready = systems["tunix"].wait_ready()
            first["tunix"], compile_s["tunix"] = ready["first_loss"], ready["compile_s"]
            systems["tunix"].run(1)
        peak = matmul_gflops()  # between warm-up and timing: the machine as the timings will find it
        names = [name for name in SYSTEMS if name in systems]
        per_repeat: dict[str, list] = {name: [] for name in names}
        for r in range(args.repeats):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                per_repeat[name].append(timed_block(systems[name], args.steps))
        if "tunix" in systems:
            systems["tunix"].close()
    return {"size": size, "cfg": ours.cfg, "tokens": tokens, "flops": step_flops(ours.cfg, tokens, args.seq),
            "xla_flops": ours.xla_flops, "first": first, "compile_s": compile_s, "per_repeat": per_repeat,
            "peak": peak}


def summarize(result: dict) -> None:
    """Median step times over all timed steps and over the quiet ones (other processes kept < QUIET_CORES busy)."""
    tokens = result["tokens"]
    result["median"], result["quiet_median"], result["quiet_count"] = {}, {}, {}
    for name, blocks in result["per_repeat"].items():
        steps = [step for block in blocks for step in block]
        result["median"][name] = statistics.median(seconds for seconds, _ in steps)
        quiet = [seconds for seconds, others in steps if others < QUIET_CORES]
        result["quiet_count"][name] = (len(quiet), len(steps))
        if quiet:
            result["quiet_median"][name] = statistics.median(quiet)
    result["tps"] = {name: tokens / seconds for name, seconds in result["median"].items()}
    result["quiet_tps"] = {name: tokens / seconds for name, seconds in result["quiet_median"].items()}


def table_row(result: dict, args, quiet: bool) -> str:
    cfg = result["cfg"]
    tps = result["quiet_tps" if quiet else "tps"]

    def cell(name):
        if name not in tps:
            return "-"
        return f"{tps[name]:.0f}" if tps[name] >= 100 else f"{tps[name]:.3g}"

    def ratio(name):
        return f"{tps['ours'] / tps[name]:.2f}x" if name in tps and "ours" in tps else "-"

    if quiet:
        counts = result["quiet_count"]
        steps = "quiet " + "/".join(f"{counts[name][0]}" for name in SYSTEMS if name in counts)
    else:
        steps = "all"
    gflops = result["flops"] * tps["ours"] / result["tokens"] / 1e9 if "ours" in tps else None
    return (f"| {result['size']} | {cfg.model_type} | {cfg.num_params() / 1e6:.1f}M | {args.batch}x{args.seq} | {steps} | "
            f"{cell('ours')} | {cell('torch')} | {cell('tunix')} | {ratio('torch')} | {ratio('tunix')} | "
            + (f"{gflops:.1f} | {gflops / result['peak']:.0%} |" if gflops else "- | - |"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=list(SIZES))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per system per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-type", choices=["qwen2", "qwen3"], default="qwen2")
    parser.add_argument("--logits-chunk", type=int, default=1024, help="ours: positions per chunk of the loss head")
    parser.add_argument("--remat", default="none", help="ours: remat policy (none, full, dots, dots_no_batch)")
    parser.add_argument("--tunix-python", default=os.environ.get("TUNIX_PYTHON"),
                        help="python of a virtualenv with google-tunix 0.1.7 (default: $TUNIX_PYTHON; none: skip)")
    parser.add_argument("--setup-tunix", metavar="DIR", help="create/update Tunix's virtualenv at DIR and use it")
    parser.add_argument("--json", metavar="FILE", help="also write every step time and the summary to FILE")
    args = parser.parse_args()
    strip_device_count_flag()
    os.environ["JAX_PLATFORMS"] = "cpu"
    tunix_python = setup_tunix(args.setup_tunix) if args.setup_tunix else args.tunix_python
    if tunix_python and not os.path.exists(tunix_python):
        print(f"tunix python {tunix_python} not found: Tunix skipped", flush=True)
        tunix_python = None

    import jax
    import torch

    peak = matmul_gflops()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; jax {jax.__version__} "
          f"({len(jax.devices())} {jax.devices()[0].platform} device), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); tunix: {tunix_python or 'skipped (no --tunix-python)'}", flush=True)
    print(f"step: batch {args.batch} x seq {args.seq}, loss on the second half, fp32, AdamW + clip {CLIP_NORM}; "
          f"{args.repeats} repeats x {args.steps} steps per system, interleaved; tokens/s = tokens / median step "
          f"time; rows 'all': every timed step, 'quiet N/N/N': only the steps (how many, per system) during which "
          f"other processes kept < {QUIET_CORES} core busy", flush=True)
    print("| model | type | params | batch x seq | steps | ours tok/s | torch tok/s | tunix tok/s | ours/torch "
          "| ours/tunix | ours GFLOP/s | of peak |")
    print("| --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", flush=True)
    results = []
    for size in args.sizes:
        result = run_size(size, args, tunix_python)
        peak = result["peak"] = max(peak, result["peak"])  # the machine's best: contention only lowers it
        summarize(result)
        print(table_row(result, args, quiet=False))
        if result["quiet_tps"]:
            print(table_row(result, args, quiet=True), flush=True)
        results.append(result)

    print(f"\nfp32 matmul peak (torch.mm 2048^3, best seen): {peak:.0f} GFLOP/s. Per system: median step time over "
          "all timed steps and over the quiet ones, the best step, each repeat's median, the median number of cores "
          "other processes kept busy during its steps, the first-step loss (batch 0, same fresh weights), compile s")
    print("| model | system | median s | quiet median s | best s | per-repeat median s | others' cores | "
          "first-step loss | compile s |")
    print("| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    for result in results:
        for name, blocks in result["per_repeat"].items():
            repeats = ", ".join(f"{statistics.median(seconds for seconds, _ in b):.3f}" for b in blocks)
            steps = [step for block in blocks for step in block]
            compile_s = result["compile_s"].get(name)
            quiet = result["quiet_median"].get(name)
            print(f"| {result['size']} | {name} | {result['median'][name]:.3f} | "
                  f"{f'{quiet:.3f}' if quiet is not None else '-'} | {min(s for s, _ in steps):.3f} | {repeats} | "
                  f"{statistics.median(o for _, o in steps):.2f} | {result['first'][name]:.6f} | "
                  f"{f'{compile_s:.1f}' if compile_s is not None else '-'} |")
    print()
    for result in results:
        first = result["first"]
        diffs = {name: abs(first[name] - first["ours"]) for name in first if name != "ours"}
        agree = all(d <= LOSS_TOLERANCE for d in diffs.values())
        print(f"first-step loss agreement ({result['size']}): " + ", ".join(
            f"|ours - {name}| = {d:.2e}" for name, d in diffs.items()) + f"; within {LOSS_TOLERANCE:g}: {agree}")
        xla = result["xla_flops"]
        print(f"FLOPs per step ({result['size']}): model {result['flops'] / 1e9:.0f} GFLOP (6N + attention)"
              + (f", XLA cost analysis of our step {xla / 1e9:.0f} GFLOP (it counts the layer scan's body once)"
                 if xla else ""), flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "peak_gflops": peak, "quiet_cores": QUIET_CORES, "results": [
                {"size": r["size"], "params": r["cfg"].num_params(), "tokens": r["tokens"], "flops": r["flops"],
                 "first_loss": r["first"], "compile_s": r["compile_s"], "median_s": r["median"],
                 "quiet_median_s": r["quiet_median"], "quiet_count": r["quiet_count"], "tokens_per_s": r["tps"],
                 "quiet_tokens_per_s": r["quiet_tps"], "steps_s_others": r["per_repeat"]} for r in results]},
                      f, indent=1)


if __name__ == "__main__":
    main()
