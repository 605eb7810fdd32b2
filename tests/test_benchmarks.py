"""The benchmark scripts run (tiny workloads), and the side-by-side timing hands turns out in order."""

import os
import subprocess
import sys
import threading
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_scheduler  # noqa: E402


def test_baton_takes_turns_in_order_and_skips_finished_schedules():
    baton = bench_scheduler.Baton(["a", "b", "c"])
    log = []

    def schedule(name, steps):
        baton.acquire(name)
        for i in range(steps):
            log.append(f"{name}{i}")
            baton.release(name, done=i == steps - 1)
            if i < steps - 1:
                baton.acquire(name)

    threads = [threading.Thread(target=schedule, args=args) for args in [("c", 1), ("b", 3), ("a", 2)]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert log == ["a0", "b0", "c0", "a1", "b1", "b2"]
    assert set(baton.wall) == {"a", "b", "c"} and all(t >= 0 for t in baton.wall.values())


def test_bench_scheduler_tiny_workload_gives_identical_runs():
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_scheduler.py"), "--queries", "3", "--slots", "2", "--median", "20",
         "--min", "8", "--max", "40", "--prompt", "16", "--repeats", "1", "--fifo", "--kv-heads", "1"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr
    assert "identical TREC runs: True; same tokens decoded: True" in out.stdout
    assert " kv1, " in out.stdout  # the model was built with --kv-heads
    bound_line = next(line for line in out.stdout.splitlines() if line.startswith("decode steps of any schedule"))
    bound = int(bound_line.split(">=")[1].split()[0])
    for line in out.stdout.splitlines():
        if "decode steps (" in line:  # every schedule takes at least the lower bound of steps
            steps = int(line.split("decode steps (")[0].split()[-1])
            assert steps >= bound


def test_bench_decode_tiny_run_prints_a_row():
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_decode.py"), "--sizes", "tiny", "--batches", "2", "--lengths", "16:8",
         "--repeats", "1"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith("tiny")]
    assert len(rows) == 1
    _, _, prompt, new, batch, ours, theirs, ratio, _ = rows[0]
    assert (prompt, new, batch) == ("16", "8", "2")
    assert float(ours) > 0 and float(theirs) > 0
    assert abs(float(ratio.rstrip("x")) - float(ours) / float(theirs)) < 0.01


def test_bench_sft_tiny_run_prints_a_row_with_ratio_and_agreeing_losses():
    env = {k: v for k, v in os.environ.items() if k != "TUNIX_PYTHON"}  # no Tunix here: ours against torch
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_sft.py"), "--sizes", "tiny", "--batch", "2", "--seq", "64",
         "--steps", "1", "--repeats", "1"],
        capture_output=True, text=True, timeout=300, env={**env, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr
    assert "(1 cpu device)" in out.stdout  # the tests' 8 virtual devices are not what is benchmarked
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.stdout.splitlines()
            if line.startswith("| tiny | qwen2 |") and "| all |" in line]
    assert len(rows) == 1
    _, _, _, shape, _, ours, theirs, tunix, ratio, tunix_ratio, _, _ = rows[0]
    assert shape == "2x64" and tunix == tunix_ratio == "-"
    assert float(ours) > 0 and float(theirs) > 0
    assert abs(float(ratio.rstrip("x")) / (float(ours) / float(theirs)) - 1) < 0.02  # tokens/s are rounded
    assert "within 0.0001: True" in out.stdout  # same weights, same batch: the same first-step loss
