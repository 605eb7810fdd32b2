"""`reasonrank-jax eval` run as a subprocess, checked against pytrec_eval."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reasonrank_jax.eval import bright, trec

pytrec_eval = pytest.importorskip("pytrec_eval")

ROOT = Path(__file__).resolve().parents[1]
BRIGHT = Path("/work/shared/data/bright")
needs_bright = pytest.mark.skipif(not BRIGHT.is_dir(), reason="BRIGHT data not present")
DEFAULT_KEYS = ["ndcg_cut.10", "ndcg_cut.1", "ndcg_cut.5", "recall.10", "recall.100", "mrr.10", "map"]


def _eval(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "reasonrank_jax", "eval", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def _reference_means(run, qrels, measures):
    per_query = pytrec_eval.RelevanceEvaluator(qrels, set(measures)).evaluate(run)
    names = next(iter(per_query.values())).keys()
    return {name: np.mean([v[name] for v in per_query.values()]) for name in names}, len(per_query)


@needs_bright
def test_json_single_run_is_flat_and_matches_pytrec_eval():
    examples, run_path = bright.bright_paths(BRIGHT, "stackoverflow")
    result = _eval(run_path, "--bright-examples", examples, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert list(out) == DEFAULT_KEYS + ["num_queries"]
    run, qrels = trec.read_run(run_path), bright.load_bright_examples(examples).qrels
    expected, num = _reference_means(run, qrels, ["ndcg_cut.1,5,10", "recall.10,100", "map", "recip_rank"])
    assert out["num_queries"] == num == 117
    for key in DEFAULT_KEYS[:-2] + ["map"]:
        assert out[key] == pytest.approx(expected[key.replace(".", "_")], abs=1e-12)
    assert 0 <= out["mrr.10"] <= expected["recip_rank"]


@needs_bright
def test_table_over_all_datasets_with_directory_matching():
    runs = [bright.bright_paths(BRIGHT, d)[1] for d in bright.DATASETS]
    result = _eval(*runs, "--bright-examples", BRIGHT / "examples", "--metrics", "map", "ndcg_cut.10")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["dataset", "queries", "nDCG@10", "MAP"]  # nDCG@10 moved first
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:] if not line.startswith("-")}
    assert list(rows) == [*bright.DATASETS, "mean"]
    ndcgs = []
    for dataset in bright.DATASETS:
        examples, run_path = bright.bright_paths(BRIGHT, dataset)
        expected, num = _reference_means(trec.read_run(run_path), bright.load_bright_examples(examples).qrels,
                                         ["ndcg_cut.10", "map"])
        assert rows[dataset] == [str(num), f"{100 * expected['ndcg_cut_10']:.2f}", f"{100 * expected['map']:.2f}"]
        ndcgs.append(expected["ndcg_cut_10"])
    assert rows["mean"][1] == f"{100 * np.mean(ndcgs):.2f}" == "30.59"  # the paper's ReasonIR average


def _tiny_files(tmp_path):
    run = tmp_path / "toy.trec"
    trec.write_run(run, {"1": {"a": 3.0, "b": 2.0, "c": 1.0}, "2": {"x": 1.0, "y": 1.0}, "9": {"z": 1.0}})
    examples = tmp_path / "toy.jsonl"
    examples.write_text(
        json.dumps({"id": "1", "query": "q", "excluded_ids": ["a"], "gold_ids": ["b"]}) + "\n"
        + json.dumps({"id": "2", "query": "q", "excluded_ids": ["N/A"], "gold_ids": ["y", "w"]}) + "\n")
    return run, examples


def test_drop_excluded_and_per_query_json(tmp_path):
    run, examples = _tiny_files(tmp_path)
    kept = json.loads(_eval(run, "--bright-examples", examples, "--json", "--metrics", "recip_rank").stdout)
    dropped = json.loads(_eval(run, "--bright-examples", examples, "--json", "--metrics", "recip_rank",
                               "--drop-excluded", "--per-query").stdout)
    # query 1: b at rank 2, rank 1 once a is dropped; query 2: y before x (tie, docid descending)
    assert kept == {"recip_rank": (0.5 + 1.0) / 2, "num_queries": 2}
    assert dropped["recip_rank"] == 1.0 and dropped["num_queries"] == 2
    assert dropped["per_query"] == {"1": {"recip_rank": 1.0}, "2": {"recip_rank": 1.0}}


def test_several_runs_json_and_qrels_file(tmp_path):
    run, _ = _tiny_files(tmp_path)
    qrels = tmp_path / "qrels.txt"
    trec.write_qrels(qrels, {"1": {"c": 1}, "2": {"x": 1}})
    other = tmp_path / "other.trec.gz"
    trec.write_run(other, {"1": {"c": 1.0}})
    result = _eval(run, other, "--qrels", qrels, "--json", "--metrics", "P.1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "runs": {"toy": {"P.1": 0.0, "num_queries": 2}, "other": {"P.1": 1.0, "num_queries": 1}},
        "mean": {"P.1": 0.5, "num_queries": 3, "num_runs": 2}}
    assert "1 of 3 queries" in result.stderr  # query 9 has no judgements


@pytest.mark.parametrize("content, flag, where", [
    ("1 Q0 a 1 0.5 t\n1 Q0 b 2 0.x t\n", "run", ":2:"),
    ("1 Q0 a 1 0.5 t\n\n1 Q0 b 2\n", "run", ":3:"),
    ("1 0 a 1\n1 0 b yes\n", "qrels", ":2:"),
    ('{"id": "1", "query": "q", "gold_ids": ["a"]}\n{"id": \n', "examples", ":2:"),
])
def test_malformed_input_exits_2_with_one_line(tmp_path, content, flag, where):
    good_run, _ = _tiny_files(tmp_path)
    bad = tmp_path / "bad.file"
    bad.write_text(content)
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("1 0 a 1\n")
    args = {"run": [bad, "--qrels", qrels], "qrels": [good_run, "--qrels", bad],
            "examples": [good_run, "--bright-examples", bad]}[flag]
    result = _eval(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{bad}{where}" in lines[0]


def test_unknown_metric_directory_matching_and_per_query_lines(tmp_path):
    run, examples = _tiny_files(tmp_path)
    assert _eval(run, "--bright-examples", examples, "--metrics", "bogus").returncode == 2
    assert _eval(run, "--qrels", examples, "--drop-excluded").returncode == 2  # qrels carry no excluded ids
    result = _eval(run, "--bright-examples", tmp_path, "--per-query", "--metrics", "recip_rank")  # finds toy.jsonl
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == ["toy\t1\trecip_rank\t0.5000", "toy\t2\trecip_rank\t1.0000"]
    (tmp_path / "toy.jsonl").unlink()
    result = _eval(run, "--bright-examples", tmp_path)
    assert result.returncode == 2 and "toy" in result.stderr
