"""`reasonrank-jax demo` and `reasonrank-jax sweep` end to end, shortened (a few steps per stage): every stage runs,
the outputs exist and agree with independent references (pytrec_eval on the written runs, transformers on the
exported model, PNG files that decode), a finished demo reruns without redoing anything, and a killed sweep resumes
without redoing its finished runs. What the full demo learns is measured in the README (it takes minutes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from reasonrank_jax.cli import main

# A few steps per stage: what the pipeline does, not what it learns.
QUICK = {
    "task": {"num_queries": 24},
    "sft": {"set": ["train.steps=3", "train.save_every=3", "train.eval_every=0", "train.global_batch=8",
                    "train.micro_batch=8"]},
    "grpo": {"set": ["train.steps=2", "train.save_every=2", "train.eval_every=0", "grpo.prompts_per_step=2",
                     "grpo.rollouts=4", "grpo.mini_batch=2", "train.micro_batch=8", "grpo.max_response=24"]},
    "rerank": {"max_new_tokens": 24},
}


def _pytrec(run_path: str, qrels_path: str) -> dict[str, float]:
    import pytrec_eval

    from reasonrank_jax.eval.trec import read_qrels, read_run

    run = read_run(run_path)
    qrels = {q: v for q, v in read_qrels(qrels_path).items() if q in run}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.10"}).evaluate(run)
    return {m: sum(v[m.replace(".", "_")] for v in per_query.values()) / len(per_query)
            for m in ("ndcg_cut.10", "recall.10")}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    config = root / "quick.yaml"
    config.write_text(yaml.safe_dump(QUICK))
    out = root / "out"
    started = time.perf_counter()
    code = main(["demo", "--out", str(out), "--config", str(config)])
    return {"code": code, "out": out, "config": config, "seconds": time.perf_counter() - started}


def test_demo_runs_every_stage_and_writes_the_table(demo_run, capsys):
    assert demo_run["code"] == 0
    out = demo_run["out"]
    stages = ["data", "filter", "tfds", "model", "sft", "export_sft", "grpo", "export_grpo", "rerank_sft",
              "rerank_grpo", "report"]
    assert sorted(p.stem for p in (out / "stages").glob("*.json")) == sorted(stages)
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"first_stage", "sft", "grpo"}
    for stage, values in results.items():
        assert set(values) == {"ndcg_cut.10", "recall.10"}
        assert all(0.0 <= v <= 1.0 for v in values.values())
    report = (out / "report.md").read_text()
    for values in results.values():  # the report shows the same figures as results.json
        for value in values.values():
            assert f"{value:.4f}" in report
    for link in ("plots/training_curves.png", "plots/stage_metrics.png", "results.json", "model/"):
        assert link in report


def test_demo_figures_match_pytrec_eval_on_the_written_runs(demo_run):
    out = demo_run["out"]
    results = json.loads((out / "results.json").read_text())
    qrels = str(out / "data" / "qrels.trec")
    runs = {"first_stage": out / "data" / "first_stage_heldout.trec", "sft": out / "rerank" / "sft" / "run.trec",
            "grpo": out / "rerank" / "grpo" / "run.trec"}
    for stage, path in runs.items():
        reference = _pytrec(str(path), qrels)
        for metric, value in reference.items():
            assert results[stage][metric] == pytest.approx(value, abs=1e-9), (stage, metric)
    # The reranked runs cover the held-out queries, and only them.
    from reasonrank_jax.eval.trec import read_run

    heldout = set(read_run(str(runs["first_stage"])))
    assert set(read_run(str(runs["grpo"]))) == heldout and len(heldout) == 2  # 10% of 24 queries


def test_demo_writes_runs_plots_and_a_loadable_hf_model(demo_run):
    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = demo_run["out"]
    for run in ("sft", "grpo"):
        assert (out / run / "config.yaml").exists() and (out / run / "metrics.jsonl").exists()
        assert list((out / run / "tensorboard").rglob("events.out.tfevents.*"))
    for name in ("training_curves.png", "stage_metrics.png"):
        with Image.open(out / "plots" / name) as image:
            assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
            assert len(np.unique(np.asarray(image.convert("L")))) > 10  # drawn, not blank
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    ids = tokenizer("Search Query: river.", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all() and logits.shape[-1] == model.config.vocab_size
    summary = json.loads((out / "stages" / "model.json").read_text())
    assert summary["params"] == sum(p.numel() for p in model.parameters())


def test_a_finished_demo_reruns_without_redoing_anything(demo_run, capsys):
    out = demo_run["out"]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    (out / "stages" / "report.json").unlink()  # as if killed before the report
    capsys.readouterr()
    assert main(["demo", "--out", str(out), "--config", str(demo_run["config"])]) == 0
    printed = capsys.readouterr().out
    assert printed.count("done earlier") == 10 and "| SFT + GRPO |" in printed
    for path, mtime in before.items():
        if path.parent.name not in ("plots",) and path.name not in ("report.md", "results.json", "report.json"):
            assert path.stat().st_mtime_ns == mtime, path


def test_demo_refuses_another_config_in_the_same_directory(demo_run, capsys):
    capsys.readouterr()
    assert main(["demo", "--out", str(demo_run["out"]), "--config", str(demo_run["config"]), "seed=1"]) == 2
    err = capsys.readouterr().err
    assert "seed" in err and "another --out" in err and len(err.strip().splitlines()) == 1


# ---- sweep ----

def _sweep_file(root: Path) -> Path:
    base = root / "base.yaml"
    base.write_text(yaml.safe_dump(QUICK))
    sweep = root / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": "base.yaml", "grid": {"grpo.grpo.reward": ["multiview", "ndcg"]},
                                     "seeds": [0]}))
    return sweep


def test_sweep_runs_a_grid_resumes_after_a_kill_and_ends_with_a_table(tmp_path):
    sweep = _sweep_file(tmp_path)
    out = tmp_path / "sweep_out"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    argv = [sys.executable, "-m", "reasonrank_jax", "sweep", str(sweep), "--out", str(out)]
    first = out / "runs" / "grpo.grpo.reward=multiview" / "seed0" / "results.json"
    second = out / "runs" / "grpo.grpo.reward=ndcg" / "seed0" / "results.json"
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    deadline = time.time() + 600
    while not first.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert first.exists(), process.communicate()[0].decode()[-3000:]
    # into the second run (it starts from a copy of the first run's SFT stages): its log opens when its demo starts;
    # a fixed sleep was too short on a loaded machine
    second_log = out / "logs" / "grpo.grpo.reward=ndcg.seed0.log"
    while not second_log.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    os.killpg(process.pid, signal.SIGKILL)  # the sweep and its running demo, mid-way through the second run
    printed = process.communicate()[0].decode()
    assert "its data and SFT stages are those of grpo.grpo.reward=multiview/seed0" in printed, printed[-3000:]
    assert not second.exists()
    finished_at = first.stat().st_mtime_ns

    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 finished earlier, 1 to go" in result.stdout
    assert first.stat().st_mtime_ns == finished_at  # not redone
    assert second.exists()

    import csv

    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["setting"] for r in rows] == ["grpo.grpo.reward=multiview", "grpo.grpo.reward=ndcg"]
    results = []
    for row in rows:
        results.append(json.loads(Path(row["run"], "results.json").read_text()))
        assert float(row["grpo.ndcg_cut.10"]) == pytest.approx(results[-1]["grpo"]["ndcg_cut.10"])
        assert float(row["final.ndcg_cut.10"]) == pytest.approx(results[-1]["grpo"]["ndcg_cut.10"])
        run_config = yaml.safe_load(open(Path(row["run"], "config.yaml")))
        assert run_config["grpo"]["set"][-1] == "grpo.reward=" + row["setting"].split("=")[1]
        grpo_config = yaml.safe_load(open(Path(row["run"], "grpo", "config.yaml")))
        assert grpo_config["grpo"]["reward"] == row["setting"].split("=")[1]
    # One SFT model for both settings: the same SFT figures, the same SFT run.
    assert results[0]["sft"] == results[1]["sft"] and results[0]["first_stage"] == results[1]["first_stage"]
    assert Path(rows[0]["run"], "sft", "metrics.jsonl").read_bytes() == \
        Path(rows[1]["run"], "sft", "metrics.jsonl").read_bytes()
    table = (out / "results.md").read_text()
    assert "grpo.grpo.reward=ndcg" in table and "2 of 2 runs finished" in table
    assert (out / "plots" / "final.png").stat().st_size > 1000 and (out / "plots" / "curves.png").exists()


def test_sweep_commands_mode_writes_one_launch_command_per_pending_run(tmp_path, capsys):
    sweep = _sweep_file(tmp_path)
    spec = yaml.safe_load(sweep.read_text())
    spec.update(seeds=[0, 1], launch="reasonrank-jax launch tpu-vm --tpu pod --zone z --")
    sweep.write_text(yaml.safe_dump(spec))
    out = tmp_path / "cmds"
    assert main(["sweep", str(sweep), "--out", str(out), "--mode", "commands"]) == 0
    lines = [line for line in (out / "commands.sh").read_text().splitlines() if line.startswith("reasonrank-jax")]
    assert len(lines) == 4 and all(" -- reasonrank-jax demo --config " in line for line in lines)
    configs = sorted((out / "configs").glob("*.yaml"))
    assert len(configs) == 4
    seeds = sorted(yaml.safe_load(p.read_text())["seed"] for p in configs)
    assert seeds == [0, 0, 1, 1]
    assert not (out / "runs").exists()  # nothing ran here
    assert "0 of 4 runs finished" in (out / "results.md").read_text()
