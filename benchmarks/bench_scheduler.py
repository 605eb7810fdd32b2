"""Rerank wall time: the barrier-free slot scheduler vs the original's per-window barrier, on the real DecodeEngine.

Workload: Q queries x 100 candidates (9 windows each at 20/10), a tiny random model, and trace lengths drawn per
window from a log-normal distribution clipped to [min, max] tokens (reasoning traces: hundreds to thousands of
tokens; the paper reports about 750 output tokens per window). Lengths are enforced with per-request max_new_tokens
and no EOS, so both schedules decode exactly the same tokens; each window's answer is read from the generated tokens,
so rankings depend on the model's outputs and both schedules must produce the same TREC run.

    python benchmarks/bench_scheduler.py [--queries 12] [--slots 8] [--median 600] [--min 150] [--max 2000]
                                         [--max-len N] [--full-cache]

--max-len sizes the KV cache as the rerank CLI does for real prompts (longest prompt bucket + max new tokens, e.g.
12288 + 3172 for BRIGHT); --full-cache adds a third run of the slot scheduler whose decode chunks attend to the whole
cache instead of its reachable prefix, to measure what the prefix saves.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402


class LengthControlledEngine:
    """The real engine; each request's trace length comes from a fixed table, so both schedules decode the same."""

    def __init__(self, engine, lengths: dict):
        self.engine, self.lengths = engine, lengths
        self.num_slots = engine.num_slots

    def submit(self, request_id, prompt_ids, max_new_tokens=None):
        self.engine.submit(request_id, prompt_ids, self.lengths[request_id])

    def step(self):
        return self.engine.step()

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

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def prompt_ids(self, state, window):
        ids = [hash((state.query, docid)) % self.vocab_size for docid in state.docids[window[0]:window[1]]]
        return (ids * 4)[:64]

    def decode(self, tokens):
        n = 20
        ranked = [t % n + 1 for t in tokens[-n:]]
        return "<think>…</think> <answer>" + " > ".join(f"[{i}]" for i in ranked) + "</answer>"


def run_schedule(schedule, cfg, params, states, lengths, slots, max_len, max_new, full_cache=False):
    from reasonrank_jax.inference.engine import DecodeEngine

    engine_cls = full_cache_engine if full_cache else DecodeEngine
    engine = LengthControlledEngine(engine_cls(cfg, params, num_slots=slots, max_len=max_len, eos_ids=[],
                                                 max_new_tokens=max_new, chunk=64), lengths)
    rankings = {}
    start = time.perf_counter()
    schedule(engine, states, TokenPrompter(cfg.vocab_size),
             on_query_done=lambda s: rankings.__setitem__(s.qid, s.final_ranking()))
    return time.perf_counter() - start, rankings, engine.engine.tokens_out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=12)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--median", type=int, default=600)
    parser.add_argument("--min", type=int, default=150)
    parser.add_argument("--max", type=int, default=2000)
    parser.add_argument("--sigma", type=float, default=0.7)
    parser.add_argument("--max-len", type=int, help="KV cache slots per sequence (default: 64 + --max)")
    parser.add_argument("--full-cache", action="store_true", help="also time chunks that attend to the whole cache")
    args = parser.parse_args()

    from reasonrank_jax.inference.rerank import make_query_state, rerank_barrier, rerank_slots
    from reasonrank_jax.models import ModelConfig, init_params

    cfg = ModelConfig(model_type="qwen2", vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=16, intermediate_size=128, qkv_bias=True)
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
    max_len = args.max_len or 64 + max_new
    # Warm-up: compile the engine's programs once, outside the timings.
    run_schedule(rerank_slots, cfg, params, states()[:1], lengths, args.slots, max_len, max_new)
    barrier_time, barrier_run, tokens = run_schedule(rerank_barrier, cfg, params, states(), lengths, args.slots,
                                                     max_len, max_new)
    slots_time, slots_run, tokens2 = run_schedule(rerank_slots, cfg, params, states(), lengths, args.slots, max_len,
                                                  max_new)
    values = np.array(list(lengths.values()))
    print(f"workload: {args.queries} queries x 9 windows, {args.slots} slots, KV cache {max_len} slots, trace "
          f"lengths median {np.median(values):.0f} (min {values.min()}, max {values.max()}), {tokens} tokens decoded")
    print(f"barrier (original schedule): {barrier_time:7.2f} s")
    print(f"slot scheduler (ours):       {slots_time:7.2f} s")
    print(f"speed-up: {barrier_time / slots_time:.2f}x; identical TREC runs: {barrier_run == slots_run}; "
          f"same tokens decoded: {tokens == tokens2}")
    if args.full_cache:
        run_schedule(rerank_slots, cfg, params, states()[:1], lengths, args.slots, max_len, max_new, full_cache=True)
        full_time, full_run, _ = run_schedule(rerank_slots, cfg, params, states(), lengths, args.slots, max_len,
                                              max_new, full_cache=True)
        print(f"slot scheduler attending the whole cache: {full_time:7.2f} s; prefix attention saves "
              f"{full_time / slots_time:.2f}x; identical TREC runs: {full_run == slots_run}")


if __name__ == "__main__":
    main()
