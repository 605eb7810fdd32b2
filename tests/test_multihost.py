"""Multi-host training on this machine: `launch local -n 2 --cpu-devices 4` runs `train sft` as two processes of four
CPU devices, joined by JAX's multi-host runtime (gloo collectives), and gets the losses of one process with eight
devices; killed (both processes, SIGKILL) and rerun, it resumes from its last checkpoint to the same losses."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6
# The losses of the 2 x 4 run equal those of the 1 x 8 run up to the order of the cross-process sums.
TOLERANCE = 2e-5


def _settings(model, data, out):
    return [f"model.path={model}", f"data.path={data}", f"train.out={out}", f"train.steps={STEPS}",
            "train.global_batch=16", "train.micro_batch=8", "train.save_every=2", "optim.lr=1e-3",
            "optim.warmup_ratio=0.2", "data.max_length=512", "data.smallest_bucket=384"]


def _env(devices=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("REASONRANK_") and k != "JAX_COORDINATOR_ADDRESS"}
    env["PYTHONPATH"] = REPO
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _two_processes(settings):
    return [sys.executable, "-m", "reasonrank_jax", "launch", "local", "-n", "2", "--cpu-devices", "4", "--",
            "train", "sft", *settings]


def _losses(out):
    return [(r["step"], r["loss"], r["grad_norm"]) for r in map(json.loads, open(os.path.join(out, "metrics.jsonl")))]


def _assert_same_losses(got, expected):
    assert [s for s, *_ in got] == [s for s, *_ in expected] == list(range(1, STEPS + 1))
    for (_, loss, norm), (_, loss_ref, norm_ref) in zip(got, expected):
        assert loss == pytest.approx(loss_ref, rel=TOLERANCE)
        assert norm == pytest.approx(norm_ref, rel=TOLERANCE)


@pytest.fixture(scope="module")
def one_process(synthetic_model, sft_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("mh") / "one"
    result = subprocess.run([sys.executable, "-m", "reasonrank_jax", "train", "sft",
                             *_settings(synthetic_model, sft_data, out)], env=_env(devices=8), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return _losses(out)


def test_two_processes_get_the_losses_of_one(one_process, synthetic_model, sft_data, tmp_path):
    out = tmp_path / "two"
    result = subprocess.run(_two_processes(_settings(synthetic_model, sft_data, out)), env=_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_losses(_losses(out), one_process)
    # one run directory, written once: process 0's report, metrics and config; each checkpoint once
    assert result.stdout.count("train sft: done") == 1
    assert sorted(os.listdir(out / "checkpoints"), key=int) == ["2", "4", "6"]  # train.save_every=2
    assert sorted(os.listdir(out)) == ["checkpoints", "config.yaml", "metrics.jsonl", "tensorboard"]


def test_killed_two_process_run_resumes_to_the_same_losses(one_process, synthetic_model, sft_data, tmp_path):
    out = tmp_path / "killed"
    settings = _settings(synthetic_model, sft_data, out)
    launcher = subprocess.Popen(_two_processes(settings), env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    checkpoint = out / "checkpoints" / "2"
    while not (checkpoint.is_dir() and (out / "metrics.jsonl").exists()
               and len((out / "metrics.jsonl").read_text().splitlines()) >= 3):
        assert launcher.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and both processes, mid-run
    launcher.wait()
    killed_at = len((out / "metrics.jsonl").read_text().splitlines())
    assert killed_at < STEPS

    rerun = subprocess.run(_two_processes(settings), env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming at step" in rerun.stdout
    _assert_same_losses(_losses(out), one_process)
