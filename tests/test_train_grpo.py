"""`reasonrank-jax train grpo` end to end, starting from the SFT run of the learning tests (conftest.sft_synthetic,
whose sampled answers are valid often enough that the rewards of a group differ): the run directory and metrics,
SIGKILL + rerun = the uninterrupted run, 1 device = 8 devices, LoRA's single copy of the base, and export."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from reasonrank_jax.cli import main

STEPS = 2
METRIC_KEYS = ("step", "reward_mean", "ndcg_mean", "recall_mean", "rbo_mean", "format_fail_rate", "pg_loss",
               "kl_loss", "pg_clipfrac", "grad_norm", "response_len_mean", "pg_clipfrac_lower", "ppo_kl",
               "invalid_rate", "reward_max", "reward_min", "zero_adv_group_rate", "response_clip_rate", "logp_diff",
               "time_rollout_s", "time_reward_s", "time_logprobs_s", "time_update_s", "lr")
TIMES = ("time_rollout_s", "time_reward_s", "time_logprobs_s", "time_update_s", "step_time_s", "tokens_per_s")


@pytest.fixture(scope="module")
def rl_data(sft_synthetic, tmp_path_factory):
    from reasonrank_jax.data.synthetic import rl_records

    root = tmp_path_factory.mktemp("grpo_data")
    heldout = rl_records(sft_synthetic["task"], "heldout")[:12]
    (root / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in heldout))
    return {"train": sft_synthetic["files"]["rl_train.parquet"], "heldout": str(root / "heldout.jsonl"),
            "start": str(sft_synthetic["run"])}


def _argv(rl_data, out, *extra):
    return ["train", "grpo", "--config", "configs/grpo_tiny.yaml", f"model.path={rl_data['start']}",
            f"data.path={rl_data['train']}", f"data.heldout={rl_data['heldout']}", f"train.out={out}",
            f"train.steps={STEPS}", "train.save_every=1", "grpo.max_response=128", "optim.lr=1e-3", *extra]


def _env(devices: int) -> dict:
    """A child process with `devices` virtual CPU devices (this test session has 8)."""
    return {**os.environ, "PYTHONPATH": os.getcwd(),
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def _metrics(out, drop=TIMES):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in f]


def _final_state(out):
    import orbax.checkpoint as ocp

    steps = sorted(int(d) for d in os.listdir(os.path.join(out, "checkpoints")) if d.isdigit())
    return steps[-1], ocp.StandardCheckpointer().restore(os.path.join(out, "checkpoints", str(steps[-1]), "state"))


def _final_params(out):
    import jax

    step, restored = _final_state(out)
    return step, [np.asarray(x) for x in jax.tree.leaves(restored)]


@pytest.fixture(scope="module")
def uninterrupted(rl_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo_runs") / "full"
    result = subprocess.run([sys.executable, "-m", "reasonrank_jax", *_argv(rl_data, out)], env=_env(1),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_run_writes_metrics_eval_config_checkpoints_and_tensorboard(uninterrupted):
    lines = [json.loads(line) for line in open(uninterrupted / "metrics.jsonl")]
    assert [line["step"] for line in lines] == list(range(1, STEPS + 1))
    for line in lines:
        missing = [k for k in METRIC_KEYS if k not in line]
        assert not missing, missing
        assert line["logp_diff"] < 1e-4  # the decoder's log-probs of its samples are the trainer's
        assert -1.0 <= line["reward_min"] <= line["reward_mean"] <= line["reward_max"] <= 1.3
        assert 0.0 <= line["pg_clipfrac"] <= 1.0 and line["kl_loss"] >= 0.0
    assert any(line["zero_adv_group_rate"] < 1.0 for line in lines)  # some groups' rewards differ: real updates
    evals = [json.loads(line) for line in open(uninterrupted / "eval.jsonl")]
    assert [e["step"] for e in evals] == [0, STEPS] and "heldout_ndcg_mean" in evals[0]
    assert lines[-1]["heldout_ndcg_mean"] == evals[-1]["heldout_ndcg_mean"]
    assert (uninterrupted / "config.yaml").read_text().startswith("# reasonrank-jax train grpo")
    assert os.listdir(uninterrupted / "tensorboard")
    assert sorted(int(d) for d in os.listdir(uninterrupted / "checkpoints") if d.isdigit())[-1] == STEPS


def _spawn(argv):
    return subprocess.Popen([sys.executable, "-m", "reasonrank_jax", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=_env(1), text=True)


def test_sigkill_then_rerun_equals_the_uninterrupted_run(rl_data, uninterrupted, tmp_path):
    out = tmp_path / "killed"
    process = _spawn(_argv(rl_data, out))
    deadline = time.time() + 600
    while time.time() < deadline:  # killed once step 1's checkpoint is complete, during a later step
        checkpoints = out / "checkpoints"
        if checkpoints.exists() and any(d.isdigit() for d in os.listdir(checkpoints)) and \
                os.path.exists(out / "metrics.jsonl"):
            break
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    result = subprocess.run([sys.executable, "-m", "reasonrank_jax", *_argv(rl_data, out)], env=_env(1),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _metrics(out) == _metrics(uninterrupted)  # rollouts, rewards and updates reproduced
    step, params = _final_params(out)
    want_step, want = _final_params(uninterrupted)
    assert step == want_step and all(np.array_equal(a, b) for a, b in zip(params, want, strict=True))


# The gradient is a sum of terms that cancel (a group's advantages sum to 0), so the different reduction order of a
# sharded step moves its norm by ~1e-4 relative (1e-5 absolute) while losses and rewards agree to 1e-6.
TOLERANCE = {"grad_norm": {"rtol": 5e-4}}


def test_one_device_and_eight_devices_give_the_same_metrics(rl_data, uninterrupted, tmp_path):
    import jax

    assert jax.device_count() == 8
    out = tmp_path / "mesh"
    assert main(_argv(rl_data, out, "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")) == 0
    got = _metrics(out, drop=TIMES + ("logp_diff",))
    want = _metrics(uninterrupted, drop=TIMES + ("logp_diff",))
    assert [g["step"] for g in got] == [1, 2]
    for g, w in zip(got, want):
        assert set(g) >= set(w) - {k for k in w if k.startswith("heldout_")}
        for key, value in w.items():
            if key in g:
                np.testing.assert_allclose(g[key], value, err_msg=key, **TOLERANCE.get(key, {"atol": 1e-5}))


def test_lora_keeps_one_copy_of_the_base_and_its_reference_is_the_base(rl_data, tmp_path):
    import jax

    from reasonrank_jax.config import Values
    from reasonrank_jax.data.rl import read_rl_examples
    from reasonrank_jax.sharding import make_mesh
    from reasonrank_jax.text import load_tokenizer
    from reasonrank_jax.training import setup
    from reasonrank_jax.training.grpo import rollout
    from reasonrank_jax.training.grpo.step import GRPOSpec, jit_rollout_logprobs
    from reasonrank_jax.training.logprobs import response_logprobs
    from reasonrank_jax.training.sections import GRPOConfig

    values = Values(GRPOConfig)
    values.set_mapping({"model": {"path": rl_data["start"]}, "data": {"path": rl_data["train"]},
                        "train": {"out": str(tmp_path / "unused"), "steps": 1}, "lora": {"rank": 4}}, "test")
    config = values.build()
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    prepared = setup.prepare(config, mesh, total_steps=1)
    state = prepared.state
    # the adapters start at zero (B = 0): nudge them, so that policy and reference differ
    state = state.replace(lora=jax.tree.map(lambda x: x + 0.05, state.lora))
    spec = GRPOSpec(prepared.spec)
    tokenizer = load_tokenizer(setup.tokenizer_dir(config.model))
    examples = read_rl_examples(rl_data["train"], tokenizer, 1024)[0][:2]
    seqs = rollout.sequences(examples, [[5, 6, 7, 2], [8, 9, 2], [10, 2], [11, 12, 13, 2]], 2, pad_id=0)
    batch = {k: v[None] for k, v in seqs.items()}
    program = jit_rollout_logprobs(spec, prepared.shardings, mesh, with_ref_params=False)
    old, ref = program(state.params, state.lora, batch)

    start_cfg, start_params = setup.load_start_model(rl_data["start"], "float32", mesh)
    want_ref = response_logprobs(start_cfg, start_params, seqs["input_ids_bt"], seqs["attention_mask_bt"],
                                 seqs["response_mask_br"].shape[1])
    mask = seqs["response_mask_br"].astype(bool)
    np.testing.assert_allclose(np.asarray(ref[0])[mask], np.asarray(want_ref)[mask], atol=1e-5)
    assert np.abs(np.asarray(old[0]) - np.asarray(ref[0]))[mask].max() > 1e-3  # the policy has the adapters

    def nbytes(tree):
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))

    compiled = program.lower(state.params, state.lora, batch).compile()
    arguments = compiled.memory_analysis().argument_size_in_bytes
    base_bytes, adapter_bytes, batch_bytes = nbytes(state.params), nbytes(state.lora), nbytes(batch)
    assert arguments <= base_bytes + adapter_bytes + batch_bytes + 4096, (arguments, base_bytes, adapter_bytes)
    assert arguments < 1.5 * base_bytes  # one copy of the base, not two


def test_export_of_a_grpo_run_holds_its_final_parameters(uninterrupted, tmp_path, capsys):
    import jax

    from reasonrank_jax.models import load_pretrained

    out = tmp_path / "hf"
    assert main(["export", str(uninterrupted), "--out", str(out)]) == 0
    _, params = load_pretrained(out)
    _, saved = _final_state(uninterrupted)
    got = jax.tree.map(np.asarray, params)
    want = jax.tree.map(np.asarray, saved["params"])
    assert jax.tree.structure(got) == jax.tree.structure(want)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))


def test_rerunning_a_finished_run_changes_nothing(rl_data, uninterrupted, capsys):
    files = {name: (uninterrupted / name).read_bytes() for name in ("metrics.jsonl", "eval.jsonl")}
    checkpoints = sorted(os.listdir(uninterrupted / "checkpoints"))
    assert main(_argv(rl_data, uninterrupted)) == 0
    assert f"done, {STEPS} steps" in capsys.readouterr().out
    assert {name: (uninterrupted / name).read_bytes() for name in files} == files
    assert sorted(os.listdir(uninterrupted / "checkpoints")) == checkpoints
