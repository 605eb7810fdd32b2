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


def _argv(model, data, out, *extra):
    return ["train", "sft", f"model.path={model}", f"data.path={data}", f"train.out={out}", f"train.steps={STEPS}",
            "train.global_batch=16", "train.micro_batch=8", "train.save_every=2", "optim.lr=1e-3",
            "optim.warmup_ratio=0.2", "data.max_length=512", "data.smallest_bucket=384", "mesh.data=2", *extra]


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
def uninterrupted(synthetic_model, sft_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    assert main(_argv(synthetic_model, sft_data, out)) == 0
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


def test_sigkill_then_rerun_equals_the_uninterrupted_run_bitwise(synthetic_model, sft_data, uninterrupted, tmp_path):
    out = tmp_path / "killed"
    process = _spawn(_argv(synthetic_model, sft_data, out))
    _wait_for_lines(out, 3, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert main(_argv(synthetic_model, sft_data, out)) == 0
    assert _metrics(out) == _metrics(uninterrupted)
    step, state = _final_state(out)
    reference_step, reference = _final_state(uninterrupted)
    assert step == reference_step == STEPS and state.keys() == reference.keys()
    for key in state:
        assert np.array_equal(state[key], reference[key]), key


def test_sigterm_leaves_a_complete_checkpoint_and_the_rerun_finishes(synthetic_model, sft_data, uninterrupted,
                                                                     tmp_path):
    out = tmp_path / "preempted"
    process = _spawn(_argv(synthetic_model, sft_data, out, "train.save_every=100"))
    _wait_for_lines(out, 1, process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) == 143
    done = len(_metrics(out))
    assert done < STEPS and sorted(os.listdir(out / "checkpoints")) == [str(done)]
    assert main(_argv(synthetic_model, sft_data, out, "train.save_every=100")) == 0
    assert _metrics(out) == _metrics(uninterrupted)


@pytest.mark.parametrize("extra, words", [
    (("optim.schedule=linear",), "optim.schedule"),
    (("train.micro_batch=4",), "train.micro_batch"),
    (("train.epochs=2",), "only one of"),
    (("lora.targets=[q, x]",), "lora.targets"),
    (("data.max_length=300", "data.overflow=error"), "data.max_length"),
    (("mesh.fsdp=3",), "mesh"),
])
def test_bad_settings_exit_2_with_one_line(synthetic_model, sft_data, tmp_path, capsys, extra, words):
    out = tmp_path / "bad"
    assert main(_argv(synthetic_model, sft_data, out, *extra)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and words in err, err
    assert not out.exists() or not (out / "config.yaml").exists()


def test_a_run_directory_resumes_only_its_own_run(uninterrupted, synthetic_model, sft_data, capsys):
    assert main(_argv(synthetic_model, sft_data, uninterrupted, "optim.lr=2e-3")) == 2
    assert "optim.lr" in capsys.readouterr().err


def test_rerunning_a_finished_run_changes_nothing(uninterrupted, synthetic_model, sft_data, capsys):
    metrics = (uninterrupted / "metrics.jsonl").read_bytes()
    checkpoints = sorted(os.listdir(uninterrupted / "checkpoints"))
    assert main(_argv(synthetic_model, sft_data, uninterrupted)) == 0
    assert f"done, {STEPS} steps" in capsys.readouterr().out
    assert (uninterrupted / "metrics.jsonl").read_bytes() == metrics
    assert sorted(os.listdir(uninterrupted / "checkpoints")) == checkpoints


def test_a_killed_run_resumes_on_another_mesh_shape(synthetic_model, sft_data, uninterrupted, tmp_path):
    out = tmp_path / "moved"
    process = _spawn(_argv(synthetic_model, sft_data, out))  # mesh (2, 4, 1)
    _wait_for_lines(out, 3, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert main(_argv(synthetic_model, sft_data, out, "mesh.data=1", "mesh.fsdp=8")) == 0
    moved, reference = _metrics(out), _metrics(uninterrupted)
    assert [m["step"] for m in moved] == [m["step"] for m in reference]
    np.testing.assert_allclose([m["loss"] for m in moved], [m["loss"] for m in reference], atol=1e-5)


def _logits_pair(export_dir, jax_params, cfg):
    """(transformers logits of the export, our logits of `jax_params`) on a ragged batch."""
    import torch
    from transformers import AutoModelForCausalLM

    from reasonrank_jax.models import forward

    rng = np.random.default_rng(1)
    ids = rng.integers(3, 400, (2, 12))
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    model = AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    ours = np.asarray(forward(cfg, jax_params, ids, mask))
    return theirs[mask.astype(bool)], ours[mask.astype(bool)]


def test_export_of_a_full_run_loads_in_transformers_at_parity(uninterrupted, tmp_path, capsys):
    from reasonrank_jax.models import load_pretrained

    out = tmp_path / "hf"
    assert main(["export", str(uninterrupted), "--out", str(out), "--max-shard-size", "200KB"]) == 0
    assert (out / "model.safetensors.index.json").exists() and (out / "tokenizer.json").exists()
    cfg, exported = load_pretrained(out)
    _, state = _final_state(uninterrupted)
    # The export holds the trained weights (not the base): compare one tensor with the checkpoint.
    assert np.array_equal(np.asarray(exported["embed"]["embedding"]), state["params/embed/embedding"])
    theirs, ours = _logits_pair(out, exported, cfg)
    assert np.abs(theirs - ours).max() < 1e-4
    assert main(["export", str(uninterrupted), "--out", str(tmp_path / "x"), "--step", "3"]) == 2
    assert "--step" in capsys.readouterr().err


def test_lora_run_merged_export_matches_the_jax_lora_model(synthetic_model, sft_data, tmp_path):
    import jax
    from safetensors.numpy import load_file

    from reasonrank_jax.models.lora import merge_lora
    from reasonrank_jax.training import setup
    from reasonrank_jax.training.checkpoint import Checkpointer
    from reasonrank_jax.training.setup import read_run_config
    from reasonrank_jax.sharding import make_mesh

    run = tmp_path / "lora_run"
    assert main(_argv(synthetic_model, sft_data, run, "lora.rank=4", "lora.alpha=8", "optim.lr=1e-2")) == 0
    out, adapter = tmp_path / "merged", tmp_path / "adapter"
    assert main(["export", str(run), "--out", str(out), "--adapter", str(adapter)]) == 0
    # The JAX LoRA model: base + restored adapters, merged in the forward pass's way.
    config = read_run_config(str(run))
    prepared = setup.prepare(config, make_mesh(), 1)
    with Checkpointer(str(run / "checkpoints"), keep=None) as checkpointer:
        state = setup.restore(prepared, checkpointer, STEPS)
    assert float(np.abs(np.asarray(state.lora["layers"]["attn"]["q_proj"]["lora_b"])).max()) > 0  # it trained
    lora_params = jax.device_get(merge_lora(state.params, state.lora, prepared.spec.lora_scale))
    theirs, ours = _logits_pair(out, lora_params, prepared.spec.cfg)
    assert np.abs(theirs - ours).max() < 1e-4
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4 and adapter_config["lora_alpha"] == 8.0 and adapter_config["peft_type"] == "LORA"
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    a = tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"]
    b = tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"]
    assert a.shape == (4, 32) and b.shape == (32, 4)
    np.testing.assert_allclose(b @ a, (np.asarray(state.lora["layers"]["attn"]["q_proj"]["lora_a"][1])
                                       @ np.asarray(state.lora["layers"]["attn"]["q_proj"]["lora_b"][1])).T,
                               atol=1e-6)


def test_train_from_a_built_sft_dataset_reads_the_same_examples(synthetic_model, sft_data, tmp_path, capsys):
    from reasonrank_jax.data.sft import read_sft_examples
    from reasonrank_jax.text import load_tokenizer

    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "sft.json").write_text(sft_data.read_text())
    assert main(["data", "build", "sft", "--manual-dir", str(manual), "--data-dir", str(tmp_path / "tfds"),
                 "--tokenizer", str(synthetic_model), "--max-length", "512", "--validation-fraction", "0"]) == 0
    version_dir = capsys.readouterr().out.strip().splitlines()[-1].removeprefix("wrote ")
    tokenizer = load_tokenizer(str(synthetic_model))
    built, _ = read_sft_examples(version_dir, tokenizer, 512)
    direct, _ = read_sft_examples(str(sft_data), tokenizer, 512)
    key = lambda e: tuple(e["input_ids"])  # noqa: E731 (the build may reorder records)
    assert sorted(map(key, built)) == sorted(map(key, direct))
    assert {key(e): e["prompt_length"] for e in built} == {key(e): e["prompt_length"] for e in direct}
    out = tmp_path / "run"
    assert main(_argv(synthetic_model, version_dir, out, "train.steps=1")) == 0
    assert len(_metrics(out)) == 1
