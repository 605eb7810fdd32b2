"""The benchmark scripts run (tiny workloads), and the side-by-side timing hands turns out in order."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

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
    # the table's tokens/s have one decimal: relative, not absolute, agreement (a slow reference, e.g. 6.9 tok/s
    # under load, is rounded by up to 0.7%)
    assert abs(float(ratio.rstrip("x")) / (float(ours) / float(theirs)) - 1) < 0.02


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


GRPO_SMOKE = ["--prompts", "2", "--rollouts", "2", "--prompt-len", "16", "--response", "8", "--steps", "1",
              "--repeats", "1", "--warmup", "1", "--prefill-repeats", "1"]
TUNIX_PYTHON = os.environ.get("TUNIX_PYTHON") or str(BENCHMARKS.parent.parent / "tunix-venv" / "bin" / "python")


def _grpo_rows(stdout: str) -> dict:
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in stdout.splitlines()
            if line.startswith(("| ours |", "| tunix |"))]
    return {row[0]: row[1:] for row in rows}


def test_bench_grpo_tiny_run_prints_phases_and_the_prefill_comparison():
    env = {k: v for k, v in os.environ.items() if k != "TUNIX_PYTHON"}  # ours alone
    out = subprocess.run([sys.executable, str(BENCHMARKS / "bench_grpo.py"), *GRPO_SMOKE],
                         capture_output=True, text=True, timeout=300, env={**env, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr
    assert "(1 cpu device)" in out.stdout and "tunix: skipped" in out.stdout
    rows = _grpo_rows(out.stdout)
    assert set(rows) == {"ours"}
    rollout, reward, logprobs, update, other, step = (float(x) for x in rows["ours"][:6])
    assert min(rollout, reward, logprobs, update) > 0
    assert abs(rollout + reward + logprobs + update + other - step) < 0.05  # one step: the phases add up
    assert "prompt prefilled once, KV shared" in out.stdout and "reference only" in out.stdout


@pytest.mark.skipif(not os.path.exists(TUNIX_PYTHON), reason="no Tunix virtualenv (benchmarks/bench_sft.py "
                                                              "--setup-tunix creates one)")
def test_bench_grpo_tiny_run_against_tunix_does_the_same_work():
    out = subprocess.run([sys.executable, str(BENCHMARKS / "bench_grpo.py"), *GRPO_SMOKE, "--steps", "2",
                          "--tunix-python", TUNIX_PYTHON], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr
    rows = _grpo_rows(out.stdout)
    assert set(rows) == {"ours", "tunix"}
    assert all(float(rows["tunix"][i]) > 0 for i in (0, 2, 3, 5))  # rollout, logprobs, update, step
    assert "rollout rows [4], new tokens per row [8], one optimizer update per step True" in out.stdout
    ratio = float(out.stdout.split("ours vs tunix per step: ")[1].split("x")[0])
    assert abs(ratio - float(rows["tunix"][5]) / float(rows["ours"][5])) < 0.02
