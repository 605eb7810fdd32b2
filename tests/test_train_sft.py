"""`reasonrank-jax train sft` end to end: a run, SIGKILL + rerun = the uninterrupted run bitwise, SIGTERM leaves a
complete checkpoint, bad configs and data exit 2."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from reasonrank_jax.cli import main

STEPS = 6


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft_data")
    rng = np.random.default_rng(0)
    words = "cell energy protein water light river stone market price robot".split()
    records = []
    for i in range(16):
        passages = " ".join(f"[{j + 1}] {' '.join(rng.choice(words, 3))}" for j in range(3))
        ranking = " > ".join(f"[{j + 1}]" for j in rng.permutation(3))
        records.append({"system": "You rank passages.", "instruction": f"Query {rng.choice(words)}. {passages}",
                        "output": f"<think>{' '.join(rng.choice(words, int(rng.integers(2, 9))))}</think> "
                                  f"<answer>{ranking}</answer>"})
    (root / "sft.json").write_text(json.dumps(records))
    return root / "sft.json"


def _argv(model, data, out, *extra):
    return ["train", "sft", f"model.path={model}", f"data.path={data}", f"train.out={out}", f"train.steps={STEPS}",
            "train.global_batch=16", "train.micro_batch=8", "train.save_every=2", "optim.lr=1e-3",
            "optim.warmup_ratio=0.2", "data.max_length=128", "data.smallest_bucket=32", "mesh.data=2", *extra]


def _metrics(out):
    lines = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    return [{k: v for k, v in line.items() if k not in ("step_time_s", "tokens_per_s", "mfu")} for line in lines]


def _final_state(out):
    import orbax.checkpoint as ocp

    steps = sorted(int(d) for d in os.listdir(os.path.join(out, "checkpoints")) if d.isdigit())
    restored = ocp.StandardCheckpointer().restore(os.path.join(out, "checkpoints", str(steps[-1]), "state"))
    return steps[-1], {"/".join(map(str, p)): np.asarray(v) for p, v in _flatten(restored)}


def _flatten(tree, prefix=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flatten(v, prefix + (k,))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _flatten(v, prefix + (i,))
    else:
        yield prefix, tree


def _spawn(argv):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.Popen([sys.executable, "-m", "reasonrank_jax", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True)


def _wait_for_lines(out, count, process, timeout=300):
    path = os.path.join(out, "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path) and len(open(path).read().splitlines()) >= count:
            return
        if process.poll() is not None:
            raise AssertionError(process.stderr.read())
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.fixture(scope="module")
def uninterrupted(tiny_reranker, sft_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    assert main(_argv(tiny_reranker / "model", sft_data, out)) == 0
    return out


def test_run_writes_metrics_config_checkpoints_and_tensorboard(uninterrupted):
    metrics = [json.loads(line) for line in open(uninterrupted / "metrics.jsonl")]
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    # warmup of ceil(0.2 * 6) = 2 updates from 0, then cosine from the peak to 0 at step 6 (HF's schedule)
    assert [m["lr"] for m in metrics[:3]] == pytest.approx([0.0, 5e-4, 1e-3])
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    for key in ("loss", "lr", "grad_norm", "tokens", "step_time_s", "tokens_per_s", "mfu", "epoch"):
        assert key in metrics[0]
    assert sorted(os.listdir(uninterrupted / "checkpoints"))[-3:] == ["2", "4", "6"]
    assert os.listdir(uninterrupted / "tensorboard")
    import yaml

    config = yaml.safe_load((uninterrupted / "config.yaml").read_text())
    assert config["train"]["steps"] == STEPS and config["optim"]["lr"] == 1e-3


def test_sigkill_then_rerun_equals_the_uninterrupted_run_bitwise(tiny_reranker, sft_data, uninterrupted, tmp_path):
    out = tmp_path / "killed"
    process = _spawn(_argv(tiny_reranker / "model", sft_data, out))
    _wait_for_lines(out, 3, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert main(_argv(tiny_reranker / "model", sft_data, out)) == 0
    assert _metrics(out) == _metrics(uninterrupted)
    step, state = _final_state(out)
    reference_step, reference = _final_state(uninterrupted)
    assert step == reference_step == STEPS and state.keys() == reference.keys()
    for key in state:
        assert np.array_equal(state[key], reference[key]), key


def test_sigterm_leaves_a_complete_checkpoint_and_the_rerun_finishes(tiny_reranker, sft_data, uninterrupted,
                                                                     tmp_path):
    out = tmp_path / "preempted"
    process = _spawn(_argv(tiny_reranker / "model", sft_data, out, "train.save_every=100"))
    _wait_for_lines(out, 1, process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) == 143
    done = len(_metrics(out))
    assert done < STEPS and sorted(os.listdir(out / "checkpoints")) == [str(done)]
    assert main(_argv(tiny_reranker / "model", sft_data, out, "train.save_every=100")) == 0
    assert _metrics(out) == _metrics(uninterrupted)


@pytest.mark.parametrize("extra, words", [
    (("optim.schedule=linear",), "optim.schedule"),
    (("train.micro_batch=4",), "train.micro_batch"),
    (("train.epochs=2",), "only one of"),
    (("lora.targets=[q, x]",), "lora.targets"),
    (("data.max_length=10", "data.overflow=error"), "data.max_length"),
    (("mesh.fsdp=3",), "mesh"),
])
def test_bad_settings_exit_2_with_one_line(tiny_reranker, sft_data, tmp_path, capsys, extra, words):
    out = tmp_path / "bad"
    assert main(_argv(tiny_reranker / "model", sft_data, out, *extra)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and words in err, err
    assert not out.exists() or not (out / "config.yaml").exists()


def test_a_run_directory_resumes_only_its_own_run(uninterrupted, tiny_reranker, sft_data, capsys):
    assert main(_argv(tiny_reranker / "model", sft_data, uninterrupted, "optim.lr=2e-3")) == 2
    assert "optim.lr" in capsys.readouterr().err
