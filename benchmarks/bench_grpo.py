"""GRPO step time by phase: reasonrank-jax's `train grpo` step against the same step in Tunix's `GRPOLearner`, same
random-weight Qwen3-shaped model, same prompts and settings, on this machine's CPU, measured side by side
(interleaved) in one run; plus our rollout with each prompt prefilled once (its KV cache shared by its G rollouts)
against the same rollout prefilling every row.

    python benchmarks/bench_grpo.py [--size tiny] [--prompts 8] [--rollouts 4] [--prompt-len 256]
                                    [--response 64] [--steps 3] [--repeats 3] [--tunix-python PATH | --setup-tunix DIR]

Tunix lives in its own virtualenv (see bench_sft.py; `--setup-tunix DIR` creates it); without --tunix-python (or
$TUNIX_PYTHON) Tunix is skipped and only our side and the prefill comparison run.

The model (bench_sft.SIZES, Qwen3 config, random weights) is built with transformers and saved to a temporary
directory, from which both sides load it. Prompts: random token ids (3 .. vocab), lengths drawn from
[prompt-len / 2, prompt-len], the longest exactly --prompt-len in every step (so both sides pad to the same
length). No EOS can be sampled (the EOS id is the vocabulary size), so every rollout decodes exactly --response
tokens on both sides: the same work. One step = --prompts prompts x --rollouts rollouts at temperature 1 (top_p 1),
rewards, group advantages, reference log-probs, and one optimizer update (AdamW, clip 1.0, lr 1e-6, fp32) on
all the rows at once (mini batch = micro batch = every row); dual-clip PPO (0.2, c = 3), k3 KL with coefficient
0.001, token-mean loss.
- ours: the phases of `reasonrank-jax train grpo` (training/grpo/run.py), called the same way on a 1-device mesh:
  rollout = `rollout.sample` (our decoder, samples = G: the prompt prefilled once, sampler log-probs returned);
  reward = the cheap reward below on the decoded ids + `rollout.advantages_of`; logprobs = `jit_reference_logprobs`
  (one forward: with one update per step the update is on-policy and uses its own log-probs, as run.py does; the
  old + reference pass it replaced is timed beside it); update = `jit_update_step` (state donated).
- tunix: `benchmarks/tunix_grpo_worker.py` in Tunix's virtualenv: `GRPOLearner` + `RLCluster` with the vanilla
  rollout engine (its Sampler prefills each of the prompts' G repeated rows), reference log-probs (one forward: with
  one iteration Tunix takes the old log-probs from the update's own forward), reward and advantages, the update
  (whose loss also computes the full logits' entropy for logging).
Reward (both): the share of even token ids in a completion (cheap, so that model time dominates; the real
multi-view reward of `rollout.score` parses text and is not timed here).
Compilation stays outside the timings (--warmup steps each). Each repeat runs a block of --steps steps of each system
in turn (order rotated per repeat); per system the median over all timed steps is reported, and a phase's median
over the steps. The prefill comparison runs `inference.decode.generate` on the first step's prompts with samples = G
(shared) and with each prompt repeated G times, samples = 1 (every row prefilled), interleaved, same key.

Contention: as in bench_sft.py, each step records how many cores other processes kept busy meanwhile; the "quiet"
row keeps only steps during which others kept < 0.25 core busy.
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

from bench_sft import SIZES, build_model, setup_tunix, strip_device_count_flag
from tunix_worker import cpu_snapshot, others_cores

PHASES = ("rollout", "reward", "logprobs", "update")
QUIET_CORES = 0.25
LR, CLIP_NORM, KL_COEF = 1e-6, 1.0, 0.001
WORKER = Path(__file__).resolve().parent / "tunix_grpo_worker.py"


def cheap_reward(completion_ids: list[int]) -> float:
    """The share of even token ids (tunix_grpo_worker.cheap_reward on the same ids as text)."""
    return sum(int(t) % 2 == 0 for t in completion_ids) / max(len(completion_ids), 1)


def make_prompts(steps: int, per_step: int, length: int, vocab: int, seed: int = 0) -> np.ndarray:
    """[steps * per_step, length] ids, left-padded with 0; the first prompt of every step is exactly `length` long."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((steps * per_step, length), np.int32)
    for row in range(len(ids)):
        n = length if row % per_step == 0 else int(rng.integers(max(length // 2, 1), length + 1))
        ids[row, length - n:] = rng.integers(3, vocab, n)
    return ids


class Ours:
    """The phases of one `train grpo` step (training/grpo/run.py) on a 1-device mesh."""

    def __init__(self, path: str, prompts: np.ndarray, args):
        import jax
        import jax.numpy as jnp

        from reasonrank_jax.models import load_pretrained
        from reasonrank_jax.sharding import make_mesh
        from reasonrank_jax.training.grpo import rollout
        from reasonrank_jax.training.grpo.step import GRPOSpec, batch_shardings, jit_reference_logprobs, \
            jit_rollout_logprobs, jit_update_step
        from reasonrank_jax.training.optim import make_optimizer
        from reasonrank_jax.training.sft import StepSpec
        from reasonrank_jax.training.state import init_state, state_shardings

        self.jax, self.rollout, self.args = jax, rollout, args
        self.mesh = mesh = make_mesh((1, 1, 1), jax.devices()[:1])
        cfg, params = load_pretrained(path, dtype="float32", mesh=mesh)
        self.cfg = cfg
        total = args.warmup + args.repeats * args.steps + 1
        optimizer, schedule = make_optimizer(LR, total, schedule="constant", weight_decay=0.0, clip_norm=CLIP_NORM)
        spec = GRPOSpec(StepSpec(cfg=cfg, optimizer=optimizer, schedule=schedule, logits_chunk=args.logits_chunk),
                        clip=0.2, clip_c=3.0, kl_coef=KL_COEF, temperature=1.0)
        rng = jax.random.PRNGKey(0)
        abstract = jax.eval_shape(lambda: init_state(params, {}, optimizer, rng))
        shardings = state_shardings(mesh, abstract, optimizer)
        self.state = jax.jit(lambda p: init_state(p, {}, optimizer, rng), out_shardings=shardings)(params)
        self.ref_params = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=shardings.params)(
            self.state.params)
        self.update = jit_update_step(spec, shardings, mesh)
        # run.py's logprobs phase with one update per step: the reference alone (the update is on-policy and uses
        # its own log-probs); the old + reference pass (what run.py did before) is timed separately for comparison
        self.reference_pass = jit_reference_logprobs(spec, shardings, mesh)
        self.logprob_pass = jit_rollout_logprobs(spec, shardings, mesh, with_ref_params=True)
        self.last_seqs = None
        self.shardings = batch_shardings(mesh)
        self.examples = [{"prompt_ids": row[row > 0].tolist()} for row in prompts]
        self.eos_ids = [cfg.vocab_size]  # never sampled: every rollout runs max_response tokens
        self.cursor = 0

    def to_micro(self, arrays: dict) -> dict:
        micro = self.args.prompts * self.args.rollouts  # every row in one micro-batch
        return {k: self.jax.device_put(v.reshape(-1, micro, *v.shape[1:]), self.shardings[k])
                for k, v in arrays.items()}

    def step(self) -> dict:
        """Seconds per phase of one step, as run.py measures them."""
        jax, rollout, args = self.jax, self.rollout, self.args
        per_step = args.prompts
        n_batches = len(self.examples) // per_step
        chosen = self.examples[(self.cursor % n_batches) * per_step:(self.cursor % n_batches + 1) * per_step]
        key = jax.random.fold_in(jax.random.PRNGKey(0), self.cursor)
        self.cursor += 1
        times, mark = {}, time.perf_counter()
        responses, sampler_logps = rollout.sample(self.cfg, self.state.params, chosen, rollouts=args.rollouts,
                                                  max_new_tokens=args.response, eos_ids=self.eos_ids,
                                                  temperature=1.0, key=key, mesh=self.mesh)
        times["rollout"], mark = time.perf_counter() - mark, time.perf_counter()
        rewards = np.asarray([cheap_reward(r) for r in responses], np.float32).reshape(per_step, args.rollouts)
        advantages = rollout.advantages_of(rewards).reshape(-1)
        times["reward"], mark = time.perf_counter() - mark, time.perf_counter()
        seqs = rollout.sequences(chosen, responses, args.rollouts, 0)
        n, r = seqs["response_mask_br"].shape
        self.last_seqs = on_mesh = self.to_micro(seqs)
        ref_logp = np.asarray(jax.device_get(self.reference_pass(self.ref_params, on_mesh))).reshape(n, r)
        times["logprobs"], mark = time.perf_counter() - mark, time.perf_counter()
        arrays = {**seqs, "old_logp_br": np.zeros_like(ref_logp), "ref_logp_br": ref_logp,
                  "sampler_logp_br": rollout.padded(sampler_logps, r), "advantages_b": advantages.astype(np.float32)}
        batch = self.to_micro(arrays)
        batch["on_policy"] = jax.device_put(np.bool_(True))
        self.state, metrics = self.update(self.state, batch)
        jax.device_get(metrics)
        times["update"] = time.perf_counter() - mark
        assert all(len(x) == args.response for x in responses)
        return times

    def logprobs(self, ref_only: bool) -> float:
        """Seconds of the last step's log-prob pass: old + reference (as run.py) or the reference alone."""
        jax = self.jax
        start = time.perf_counter()
        if ref_only:
            jax.device_get(self.reference_pass(self.ref_params, self.last_seqs))
        else:
            jax.device_get(self.logprob_pass(self.state.params, self.state.trainable, self.ref_params,
                                             self.last_seqs))
        return time.perf_counter() - start

    def generate(self, shared: bool, key, new_tokens: int | None = None) -> float:
        """Seconds of the first step's rollout: prompts prefilled once (shared) or every row prefilled."""
        from reasonrank_jax.inference.decode import generate

        args = self.args
        prompts = [e["prompt_ids"] for e in self.examples[:args.prompts]]
        if not shared:
            prompts = [p for p in prompts for _ in range(args.rollouts)]
        start = time.perf_counter()
        generate(self.cfg, self.state.params, prompts, new_tokens or args.response, self.eos_ids, temperature=1.0,
                 samples=args.rollouts if shared else 1, key=key, return_logprobs=True, mesh=self.mesh,
                 scaled_logprobs=True)
        return time.perf_counter() - start


class Tunix:
    """Tunix's GRPOLearner in its own virtualenv: benchmarks/tunix_grpo_worker.py over pipes."""

    def __init__(self, python: str, path: str, prompts_file: str, args):
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        self.proc = subprocess.Popen(
            [python, str(WORKER), "--model-dir", path, "--prompts", prompts_file, "--prompts-per-step",
             str(args.prompts), "--rollouts", str(args.rollouts), "--max-prompt", str(args.prompt_len),
             "--max-response", str(args.response), "--lr", str(LR), "--clip-norm", str(CLIP_NORM), "--kl-coef",
             str(KL_COEF), "--warmup", str(args.warmup)],
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
                tail = "".join(self.stderr[-40:])
                raise RuntimeError(f"tunix grpo worker exited with code {self.proc.returncode}:\n{tail}")
            if line.startswith("{"):
                return json.loads(line)

    def wait_ready(self) -> dict:
        if self.ready is None:
            self.ready = self._read()
        return self.ready

    def run(self, n: int) -> list[dict]:
        self.proc.stdin.write(f"run {n}\n")
        self.proc.stdin.flush()
        out = []
        while True:
            record = self._read()
            if "done" in record:
                return out
            out.append(record)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()


def timed_block(system, n: int) -> list[dict]:
    """Each of n steps: {"seconds", "phases", "others"}."""
    if isinstance(system, Tunix):
        return system.run(n)
    out = []
    for _ in range(n):
        before = cpu_snapshot()
        phases = system.step()
        after = cpu_snapshot()
        out.append({"seconds": after[0] - before[0], "phases": phases, "others": others_cores(before, after)})
    return out


def median_or_none(values):
    values = list(values)
    return statistics.median(values) if values else None


def fmt(x, digits=3):
    return "-" if x is None else f"{x:.{digits}f}"


def main() -> None:  # noqa: C901 - a linear script
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=list(SIZES))
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--rollouts", type=int, default=4, help="rollouts per prompt (G)")
    parser.add_argument("--prompt-len", type=int, default=256, help="the longest prompt's tokens (a power of two)")
    parser.add_argument("--response", type=int, default=64, help="new tokens per rollout")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per system per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per system (compilation)")
    parser.add_argument("--prefill-repeats", type=int, default=5, help="timed rollouts per prefill variant")
    parser.add_argument("--logits-chunk", type=int, default=1024, help="ours: positions per chunk of the loss head")
    parser.add_argument("--tunix-python", default=os.environ.get("TUNIX_PYTHON"),
                        help="python of a virtualenv with google-tunix 0.1.7 (default: $TUNIX_PYTHON; none: skip)")
    parser.add_argument("--setup-tunix", metavar="DIR", help="create/update Tunix's virtualenv at DIR and use it")
    parser.add_argument("--json", metavar="FILE", help="also write every step's times to FILE")
    args = parser.parse_args()
    if args.prompt_len & (args.prompt_len - 1) or args.prompt_len < 16:
        parser.error("--prompt-len must be a power of two >= 16 (our prompt bucket; Tunix pads to it exactly)")
    strip_device_count_flag()
    os.environ["JAX_PLATFORMS"] = "cpu"
    tunix_python = setup_tunix(args.setup_tunix) if args.setup_tunix else args.tunix_python
    if tunix_python and not os.path.exists(tunix_python):
        print(f"tunix python {tunix_python} not found: Tunix skipped", flush=True)
        tunix_python = None

    import jax

    vocab = SIZES[args.size][5]
    n_batches = args.warmup + args.repeats * args.steps
    with tempfile.TemporaryDirectory() as path:
        build_model(args.size, "qwen3", path)
        prompts = make_prompts(n_batches, args.prompts, args.prompt_len, vocab)
        prompts_file = os.path.join(path, "prompts.npz")
        np.savez(prompts_file, ids=prompts)
        systems: dict[str, object] = {}
        if tunix_python:  # starts first: it loads and compiles while we do
            systems["tunix"] = Tunix(tunix_python, path, prompts_file, args)
        ours = Ours(path, prompts, args)
        systems["ours"] = ours
        compile_s = {}
        start = time.perf_counter()
        warm = [sum(ours.step().values()) for _ in range(args.warmup)]
        compile_s["ours"] = warm[0] if warm else None
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; jax {jax.__version__} "
              f"({len(jax.devices())} {jax.devices()[0].platform} device); model {args.size} qwen3 "
              f"{ours.cfg.num_params() / 1e6:.1f}M params; tunix: {tunix_python or 'skipped (no --tunix-python)'}",
              flush=True)
        print(f"step: {args.prompts} prompts x {args.rollouts} rollouts, prompts <= {args.prompt_len} tokens, "
              f"{args.response} new tokens each (no EOS), 1 update on all {args.prompts * args.rollouts} rows, "
              f"fp32; our warm-up {time.perf_counter() - start:.1f} s", flush=True)
        if "tunix" in systems:
            ready = systems["tunix"].wait_ready()
            compile_s["tunix"] = ready["compile_s"]
        names = [name for name in ("ours", "tunix") if name in systems]
        per_repeat: dict[str, list] = {name: [] for name in names}
        for r in range(args.repeats):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                per_repeat[name].append(timed_block(systems[name], args.steps))
        if "tunix" in systems:
            systems["tunix"].close()

        # prefill once per prompt vs every row, interleaved (compiled first); each also with 1 new token (the
        # prefill and one decode step) to split the rollout into prefill and decode
        key = jax.random.PRNGKey(1)
        variants = {"shared": (True, None), "every_row": (False, None), "shared_1": (True, 1),
                    "every_row_1": (False, 1)}
        for shared, new in variants.values():
            ours.generate(shared, key, new)
        prefill = {name: [] for name in variants}
        for i in range(args.prefill_repeats):
            for name in (list(variants) if i % 2 == 0 else list(variants)[::-1]):
                prefill[name].append(ours.generate(*variants[name][:1], key, variants[name][1]))
        ours.logprobs(True)  # compile
        logprob_passes = {"old_and_ref": [], "ref_only": []}
        for i in range(args.prefill_repeats):
            for ref_only in ((False, True) if i % 2 == 0 else (True, False)):
                logprob_passes["ref_only" if ref_only else "old_and_ref"].append(ours.logprobs(ref_only))

    steps = {name: [s for block in blocks for s in block] for name, blocks in per_repeat.items()}
    median = {name: median_or_none(s["seconds"] for s in v) for name, v in steps.items()}
    quiet = {name: median_or_none(s["seconds"] for s in v if s["others"] < QUIET_CORES) for name, v in steps.items()}
    quiet_n = {name: sum(s["others"] < QUIET_CORES for s in v) for name, v in steps.items()}
    phase = {name: {p: median_or_none(s["phases"][p] for s in v if p in s["phases"]) for p in PHASES}
             for name, v in steps.items()}
    for name, v in steps.items():  # the step less its phases, per step
        phase[name]["other"] = median_or_none(s["seconds"] - sum(s["phases"].get(p, 0.0) for p in PHASES) for s in v)
    print(f"\nmedian seconds per step over {args.repeats} repeats x {args.steps} steps (interleaved); 'other' = step "
          f"- the phases (Tunix: its data queue, metric buffering); quiet = steps during which other processes kept "
          f"< {QUIET_CORES} core busy")
    print("| system | rollout | reward | logprobs | update | other | step | quiet step (n) | compile s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in names:
        print(f"| {name} | " + " | ".join(fmt(phase[name][p]) for p in (*PHASES, "other"))
              + f" | {fmt(median[name])} | {fmt(quiet[name])} ({quiet_n[name]}) | "
                f"{fmt(compile_s.get(name), 1)} |")
    if "tunix" in median:
        ratios = ", ".join(f"{p} {phase['tunix'][p] / phase['ours'][p]:.2f}x" for p in PHASES
                           if phase["tunix"][p] and phase["ours"][p])
        print(f"\nours vs tunix per step: {median['tunix'] / median['ours']:.2f}x faster (all steps)"
              + (f", {quiet['tunix'] / quiet['ours']:.2f}x (quiet steps)" if quiet["tunix"] and quiet["ours"] else "")
              + f"; per phase (tunix s / ours s): {ratios}; goal >= 2x: {median['tunix'] / median['ours'] >= 2}")
    if "tunix" in steps:
        t = steps["tunix"]
        rows = sorted({s.get("rows") for s in t})
        lengths = sorted({n for s in t for n in s.get("new_tokens", [])})
        advancing = all(b["train_steps"] == a["train_steps"] + 1 for a, b in zip(t, t[1:]) if "train_steps" in a)
        same = rows == [args.prompts * args.rollouts] and lengths == [args.response] and advancing
        print(f"same work per step: tunix rollout rows {rows}, new tokens per row {lengths}, one optimizer update "
              f"per step {advancing} (ours: {args.prompts * args.rollouts} rows x {args.response}): {same}")
    med = {name: statistics.median(v) for name, v in prefill.items()}
    shared, every = med["shared"], med["every_row"]
    print(f"\nrollout ({args.prompts} prompts x {args.rollouts} samples, {args.response} new tokens; median of "
          f"{args.prefill_repeats}, interleaved): prompt prefilled once, KV shared {shared:.3f} s; every row "
          f"prefilled {every:.3f} s; shared is {every / shared:.2f}x faster")
    print(f"  of which prefill + 1 decode step (1 new token): shared {med['shared_1']:.3f} s, every row "
          f"{med['every_row_1']:.3f} s ({med['every_row_1'] / med['shared_1']:.2f}x); the other "
          f"{args.response - 1} decode steps: shared {shared - med['shared_1']:.3f} s, every row "
          f"{every - med['every_row_1']:.3f} s")
    both, ref = (statistics.median(logprob_passes[k]) for k in ("old_and_ref", "ref_only"))
    print(f"our logprobs phase (last step's rows; median of {args.prefill_repeats}): reference only (train grpo "
          f"with one update a step) {ref:.3f} s; old + reference (needed for a second update) {both:.3f} s")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "compile_s": compile_s, "median_s": median, "quiet_median_s": quiet,
                       "phase_median_s": phase, "steps": steps, "prefill_s": prefill,
                       "logprob_pass_s": logprob_passes}, f, indent=1)


if __name__ == "__main__":
    main()
