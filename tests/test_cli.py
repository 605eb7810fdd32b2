"""The dispatcher: --help, YAML configs (shipped ones valid, overrides, bad files), one-line errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reasonrank_jax.cli import build_parser, main

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _run(*args):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.run([sys.executable, "-m", "reasonrank_jax", *args], capture_output=True, text=True, env=env)


def test_help_lists_every_command():
    result = _run("--help")
    assert result.returncode == 0
    for command in ("demo", "sweep", "smoke", "model-info", "eval", "rerank", "data", "train", "export", "plan",
                    "launch"):
        assert command in result.stdout
    train = _run("train", "--help")
    assert train.returncode == 0 and "sft" in train.stdout and "grpo" in train.stdout


LEAF_OF_CONFIG = {"smoke": ("smoke",), "rerank": ("rerank",), "sft": ("train", "sft"), "grpo": ("train", "grpo"),
                  "demo": ("demo",), "pipeline": ("demo",)}
REQUIRED = {("rerank",): {"model": "m", "run": "r", "corpus": "c", "queries": "q", "out": "o"},
            ("train", "sft"): {"model.path": "m", "data.path": "d", "train.out": "o"},
            ("train", "grpo"): {"model.path": "m", "data.path": "d", "train.out": "o"}}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load_with_their_values(path):
    import yaml

    from reasonrank_jax.config import Source, Values, key_name, read_yaml_mapping

    leaf = LEAF_OF_CONFIG[path.name.split("_")[0]]
    _, leaves = build_parser()
    values = Values(leaves[leaf][0])
    values.set_mapping(read_yaml_mapping(str(path)), str(path))  # unknown keys, wrong types: InputError
    for key, value in REQUIRED.get(leaf, {}).items():
        values.set(key, value, Source(None, key))
    config = values.build(str(path))

    def check(node, mapping):
        for key, value in mapping.items():
            if isinstance(value, dict):
                check(getattr(node, key_name(key)), value)
            elif value is not None:  # null: a placeholder the command line fills in
                expected = tuple(value) if isinstance(value, list) else value
                assert getattr(node, key_name(key)) == expected, key

    check(config, yaml.safe_load(path.read_text()))


@pytest.mark.parametrize("path", sorted((CONFIGS / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_sweeps_expand_to_valid_demo_configs(path, tmp_path):
    from reasonrank_jax.pipeline.sweep import Sweep, SweepConfig

    sweep = Sweep(SweepConfig(sweep=str(path), out=str(tmp_path / "out")))
    assert len(sweep.runs) >= 2 and len({r.name for r in sweep.runs}) == len(sweep.runs)
    for run in sweep.runs:
        text = sweep.run_config_text(run)  # checked as `demo` checks its config: bad input raises
        assert f"seed: {run.seed}" in text


def test_config_values_and_command_line_override(tmp_path, capsys):
    config = tmp_path / "smoke.yaml"
    config.write_text("model-type: llama\nlayers: 1\nhidden: 32\n")
    assert main(["smoke", "--config", str(config), "--out", str(tmp_path / "a")]) == 0
    assert "exported llama" in capsys.readouterr().out
    assert main(["smoke", "--config", str(config), "--model-type", "qwen3", "--out", str(tmp_path / "b")]) == 0
    assert "exported qwen3" in capsys.readouterr().out


def test_bad_config_is_one_line_exit_2(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("windoww: 20\n")
    result = _run("eval", "--config", str(config), "run.trec")
    assert result.returncode == 2 and "windoww" in result.stderr and str(config) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    config.write_text("a: [unclosed\n")
    result = _run("smoke", "--config", str(config))
    assert result.returncode == 2 and "not valid YAML" in result.stderr and "Traceback" not in result.stderr


def test_yaml_booleans_and_lists_keep_their_meaning(tmp_path, capsys):
    run, qrels, config = tmp_path / "run.trec", tmp_path / "qrels", tmp_path / "eval.yaml"
    run.write_text("q1 Q0 d1 1 2.0 x\nq1 Q0 d2 2 1.0 x\n")
    qrels.write_text("q1 0 d2 1\n")
    config.write_text(f'runs: [{run}]\nqrels: {qrels}\nper-query: "no"\nmetrics: "ndcg_cut.10 map"\njson: yes\n')
    assert main(["eval", "--config", str(config)]) == 0
    import json

    values = json.loads(capsys.readouterr().out)
    assert values == {"ndcg_cut.10": pytest.approx(1 / 1.5849625007211563), "map": 0.5, "num_queries": 1}
