"""Rerank wall time: the barrier-free slot scheduler vs the original's per-window barrier, on the real DecodeEngine.

Workload: Q queries x 100 candidates (9 windows each at 20/10), a tiny random model, and trace lengths drawn per
window from a log-normal distribution clipped to [min, max] tokens (reasoning traces: hundreds to thousands of
tokens; the paper reports about 750 output tokens per window). Lengths are enforced with per-request max_new_tokens
and no EOS, so both schedules decode exactly the same tokens; each window's answer is read from the generated tokens,
so rankings depend on the model's outputs and both schedules must produce the same TREC run.

The schedules run side by side in one process, in threads that take turns one engine step (a decode chunk of up to
64 tokens) at a time, each charged the time of its own turns (`Baton`): this VM's speed drifts by tens of percent
over minutes, which decided the ratio when the schedules ran one after the other (1.29x to 1.56x for one workload).
The output also gives the fewest decode steps any schedule could take (all tokens spread over the slots, or the
longest query's windows in sequence): the speed-up on steps of fixed cost cannot exceed barrier steps / that bound.

    python benchmarks/bench_scheduler.py [--queries 12] [--slots 8] [--median 600] [--min 150] [--max 2000]
                                         [--prompt 64] [--intermediate 128] [--kv-heads 2] [--max-len N]
                                         [--full-cache] [--fifo] [--repeats 2] [--device cpu|gpu]

The engine's decode chunks attend to the written cache prefix, whose length is set by the deepest slot: the slot
scheduler always has some slot deep into a trace, while a barrier wave starts all its slots together, so when KV
reads dominate a step (the default tiny model) prefix attention helps the barrier more. --full-cache also times both
schedules attending to the whole cache (constant step cost, so the comparison isolates scheduling).
--intermediate 16384 widens the tiny model's MLP so that reading weights outweighs reading the cache; it still reads
about 5x more KV per byte of weights than a 7B model. --kv-heads 1 --intermediate 44032 gives the tiny model
Qwen2.5-7B's ratio of weights to KV cache per token (about 266k parameters per cached value: 7.62B against 28 layers
x 2 x 4 KV heads x 128), the cost profile of the released ReasonRank-7B at the same context length. (Real window
prompts are thousands of tokens, not 64: that adds KV reads of equal size to both schedules' steps, and prefill
work to both.) --max-len sizes the KV cache as the rerank CLI does (longest prompt bucket + max new tokens, e.g.
12288 + 3172 for BRIGHT).
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np


class Baton:
    """Schedules run in threads that take turns, one engine step per turn, and each is charged the wall and process
    CPU time of its own turns. This VM's speed drifts by tens of percent over seconds to minutes: run one after the
    other, two schedules would be timed on different machines; taking turns every few milliseconds, on the same one.
    """

    def __init__(self, names):
        self._cond = threading.Condition()
        self._order = list(names)
        self._turn = self._order[0]
        self._since = (0.0, 0.0)
        self.wall = dict.fromkeys(names, 0.0)
        self.cpu = dict.fromkeys(names, 0.0)

    def acquire(self, name):
        with self._cond:
            self._cond.wait_for(lambda: self._turn == name)
        self._since = (time.perf_counter(), time.process_time())

    def release(self, name, done=False):
        wall, cpu = self._since
        self.wall[name] += time.perf_counter() - wall
        self.cpu[name] += time.process_time() - cpu
        with self._cond:
            following = self._order[(self._order.index(name) + 1) % len(self._order)]
            if done:
                self._order.remove(name)
            self._turn = following if self._order else None
            self._cond.notify_all()


class LengthControlledEngine:
    """The real engine; each request's trace length comes from a fixed table, so every schedule decodes the same.
    After each step it hands the turn to the next schedule (`Baton`)."""

    def __init__(self, engine, lengths: dict, name: str, baton: Baton, fifo: bool = False):
        self.engine, self.lengths, self.name, self.baton, self.fifo = engine, lengths, name, baton, fifo
        self.num_slots = engine.num_slots

    def submit(self, request_id, prompt_ids, max_new_tokens=None, priority=0):
        self.engine.submit(request_id, prompt_ids, self.lengths[request_id], 0 if self.fifo else priority)

    def step(self):
        finished = self.engine.step()
        self.baton.release(self.name)
        self.baton.acquire(self.name)
        return finished

    def has_work(self):
        return self.engine.has_work()


def full_cache_engine(*args, **kwargs):
    """The engine with prefix attention switched off: every chunk attends to all max_len cache slots."""
    from reasonrank_jax.inference.engine import DecodeEngine

    engine = DecodeEngine(*args, **kwargs)
    engine._attend_len = lambda: engine.max_len
    return engine


class TokenPrompter:
    """Prompts are token ids derived from the window's docids; answers are read from the generated token ids."""

    def __init__(self, vocab_size: int, length: int):
        self.vocab_size, self.length = vocab_size, length

    def prompt_ids(self, state, window):
        ids = [hash((state.query, docid)) % self.vocab_size for docid in state.docids[window[0]:window[1]]]
        return (ids * -(-self.length // len(ids)))[:self.length]

    def decode(self, tokens):
        n = 20
        ranked = [t % n + 1 for t in tokens[-n:]]
        return "<think>…</think> <answer>" + " > ".join(f"[{i}]" for i in ranked) + "</answer>"


def warm_up(engine, prompt_len: int, max_new: int) -> None:
    """Compile every program a run can need: each admission batch bucket, and a full-length batch that walks the
    decode chunk through every attended-prefix bucket."""
    prompt = [i % 97 for i in range(prompt_len)]
    batch = 1
    while batch <= engine.num_slots:
        for i in range(batch):
            engine.submit(("admit", batch, i), prompt, 1)
        while engine.has_work():
            engine.step()
        batch *= 2
    for i in range(engine.num_slots):
        engine.submit(("decode", i), prompt, max_new)
    while engine.has_work():
        engine.step()


def run_side_by_side(contestants, cfg, params, states, lengths, slots, max_len, max_new, prompt):
    """contestants: (name, schedule, full_cache, fifo). Every program is compiled before the clock starts."""
    from reasonrank_jax.inference.engine import DecodeEngine

    baton = Baton([name for name, *_ in contestants])
    runs, results, errors = [], {}, []
    for name, schedule, full_cache, fifo in contestants:
        engine_cls = full_cache_engine if full_cache else DecodeEngine
        decoder = engine_cls(cfg, params, num_slots=slots, max_len=max_len, eos_ids=[], max_new_tokens=max_new,
                             chunk=64)
        warm_up(decoder, prompt, max_new)
        decoder.tokens_in = decoder.tokens_out = decoder.decode_steps = decoder.attended_slots = 0
        runs.append((name, schedule, decoder, LengthControlledEngine(decoder, lengths, name, baton, fifo)))

    def run(name, schedule, engine):
        rankings = {}
        baton.acquire(name)
        try:
            schedule(engine, states(), TokenPrompter(cfg.vocab_size, prompt),
                     on_query_done=lambda s: rankings.__setitem__(s.qid, s.final_ranking()))
            results[name] = rankings
        except BaseException as error:  # re-raised in the main thread
            errors.append(error)
        finally:
            baton.release(name, done=True)

    threads = [threading.Thread(target=run, args=(name, schedule, engine)) for name, schedule, _, engine in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return {name: {"wall": baton.wall[name], "cpu": baton.cpu[name], "steps": decoder.decode_steps,
                   "attend": decoder.attended_slots / max(decoder.decode_steps, 1), "tokens": decoder.tokens_out,
                   "run": results[name]}
            for name, _, decoder, _ in runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=12)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--median", type=int, default=600)
    parser.add_argument("--min", type=int, default=150)
    parser.add_argument("--max", type=int, default=2000)
    parser.add_argument("--sigma", type=float, default=0.7)
    parser.add_argument("--intermediate", type=int, default=128,
                        help="MLP width of the tiny model; e.g. 16384 makes reading weights outweigh reading the KV "
                             "cache in a decode step")
    parser.add_argument("--kv-heads", type=int, default=2,
                        help="KV heads of the tiny model (4 query heads of 16 dims); with --kv-heads 1 "
                             "--intermediate 44032, KV bytes per token / weight bytes is that of Qwen2.5-7B")
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens per window (BRIGHT: thousands)")
    parser.add_argument("--max-len", type=int, help="KV cache slots per sequence (default: prompt bucket + --max)")
    parser.add_argument("--full-cache", action="store_true", help="also time chunks that attend to the whole cache")
    parser.add_argument("--fifo", action="store_true",
                        help="also time the slot scheduler with free slots filled in submission order (no priority "
                             "for the query with the most windows left)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="side-by-side runs of all schedules (median times reported)")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="gpu: JAX's CUDA backend")
    args = parser.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cuda" if args.device == "gpu" else "cpu")  # before JAX is imported

    import jax

    from reasonrank_jax.inference.decode import bucket_length
    from reasonrank_jax.inference.rerank import make_query_state, rerank_barrier, rerank_slots
    from reasonrank_jax.models import ModelConfig, init_params

    cfg = ModelConfig(model_type="qwen2", vocab_size=512, hidden_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=args.kv_heads, head_dim=16, intermediate_size=args.intermediate, qkv_bias=True)
    params = init_params(cfg)
    rng = np.random.default_rng(0)

    def states():
        return [make_query_state(f"q{i}", f"query {i}", [f"q{i}d{j}" for j in range(100)]) for i in range(args.queries)]

    lengths = {}
    for state in states():
        for w in range(len(state.windows)):
            draw = rng.lognormal(np.log(args.median), args.sigma)
            lengths[(state.qid, w)] = int(np.clip(draw, args.min, args.max))
    max_new = args.max
    max_len = args.max_len or bucket_length(args.prompt) + max_new
    contestants = [("barrier", rerank_barrier, False, False), ("slots", rerank_slots, False, False)]
    if args.fifo:
        contestants.append(("fifo", rerank_slots, False, True))
    if args.full_cache:
        contestants += [("full barrier", rerank_barrier, True, False), ("full slots", rerank_slots, True, False)]
    # Each repeat runs every schedule side by side, taking turns step by step (`Baton`); the median of each
    # schedule's times over the repeats is reported.
    trials = [run_side_by_side(contestants, cfg, params, states, lengths, args.slots, max_len, max_new, args.prompt)
              for _ in range(args.repeats)]
    results = {name: {**trials[0][name], "wall": float(np.median([t[name]["wall"] for t in trials])),
                      "cpu": float(np.median([t[name]["cpu"] for t in trials]))} for name, *_ in contestants}
    barrier, slots = results["barrier"], results["slots"]
    tokens = barrier["tokens"]
    values = np.array(list(lengths.values()))
    # No schedule can take fewer decode steps than these (a request's first token comes from its prefill):
    # the slots' share of all steps, and the longest query's windows one after another.
    packing = -(-int(np.sum(values - 1)) // args.slots)
    chain = max(sum(n - 1 for (qid, _), n in lengths.items() if qid == q) for q in {qid for qid, _ in lengths})
    print(f"workload: {args.queries} queries x 9 windows, {args.prompt}-token prompts, {args.slots} slots, KV cache "
          f"{max_len} slots, trace lengths median {np.median(values):.0f} (min {values.min()}, max {values.max()}), "
          f"{tokens} tokens decoded; model d{cfg.hidden_size} f{cfg.intermediate_size} kv{cfg.num_kv_heads}, "
          f"{jax.devices()[0].platform}, load average {os.getloadavg()[0]:.1f}")

    def row(name, stats):
        print(f"{name:40s} {stats['wall']:7.2f} s wall {stats['cpu']:7.2f} s cpu {stats['steps']:6d} decode steps "
              f"({stats['steps'] / bound - 1:+.0%} over the bound), mean attended cache {stats['attend']:6.0f} slots")

    def ratios(a, b):
        return (f"{a['wall'] / b['wall']:.2f}x wall, {a['cpu'] / b['cpu']:.2f}x cpu, "
                f"{a['steps'] / b['steps']:.2f}x steps")

    def same_runs(a, b):
        differing = sum(a["run"][qid] != b["run"].get(qid) for qid in a["run"])
        return "True" if a["run"] == b["run"] else f"False ({differing} of {len(a['run'])} queries ranked differently)"

    bound = max(packing, chain)
    print(f"decode steps of any schedule >= {bound} (all tokens over {args.slots} slots: {packing}; longest query's "
          f"windows in sequence: {chain}); ceiling of the speed-up on a step of fixed cost: "
          f"{barrier['steps'] / bound:.2f}x")
    row("barrier (original schedule)", barrier)
    row("slot scheduler (ours)", slots)
    per_repeat = ", ".join(f"{t['barrier']['wall'] / t['slots']['wall']:.2f}x" for t in trials)
    print(f"speed-up: {ratios(barrier, slots)} (wall, per repeat: {per_repeat}); identical TREC runs: "
          f"{same_runs(barrier, slots)}; same tokens decoded: {tokens == slots['tokens']}")
    if args.fifo:
        fifo = results["fifo"]
        row("slot scheduler, slots filled first come first served", fifo)
        print(f"most windows left first vs first come first served: {ratios(fifo, slots)}; identical TREC runs: "
              f"{same_runs(fifo, slots)}")
    if args.full_cache:
        full_barrier, full_slots = results["full barrier"], results["full slots"]
        row("barrier, attending the whole cache", full_barrier)
        row("slot scheduler, attending the whole cache", full_slots)
        print(f"whole cache: speed-up {ratios(full_barrier, full_slots)}; identical TREC runs: "
              f"{full_barrier['run'] == full_slots['run'] == slots['run']}; prefix attention saves "
              f"{full_barrier['wall'] / barrier['wall']:.2f}x "
              f"(barrier), {full_slots['wall'] / slots['wall']:.2f}x (slots) wall")

if __name__ == "__main__":
    main()
