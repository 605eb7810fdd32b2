"""`rerank` as 2 processes (`launch local -n 2`): each decodes the queries its qid hashes to, and process 0 merges the
same run.trec as one process writes; resume of a killed 2-process job by 2 processes and by 1, and a rerun.

The tiny model of tests/test_rerank.py answers with newlines only, so every window keeps its order and any split of
the queries would give the same run. This one (the same tokenizer, 2 layers, sharp random attention, an output layer
that can only say digits and separators) answers each window differently, so the rankings are not the first-stage
ones. Its greedy windows come out the same whichever queries share the engine (checked: each query alone, all three
with 1, 2 or 3 slots, give the same window records), so the runs are compared byte for byte.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from reasonrank_jax.inference.cli import query_process
from test_rerank import _cli_args, _read_trec

QIDS = ["q0", "q1", "q2"]
MODEL_FILES = ("model.safetensors", "config.json", "generation_config.json")


@pytest.fixture(scope="module")
def answering_reranker(tiny_reranker, tmp_path_factory):
    """tiny_reranker's data and tokenizer with a tiny random Qwen2 whose answers depend on the window."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    root = tmp_path_factory.mktemp("answering")
    (root / "model").mkdir()
    for name in os.listdir(tiny_reranker / "model"):
        if name not in MODEL_FILES:
            shutil.copy(tiny_reranker / "model" / name, root / "model" / name)
    for name in ("run.trec", "corpus.jsonl", "queries.jsonl", "qrels.txt"):
        shutil.copy(tiny_reranker / name, root / name)
    tokenizer = AutoTokenizer.from_pretrained(root / "model")
    allowed = sorted({i for s in list("123456789") + [" >", " ", ",", ";", "]", "[", "(", ")", "] >", " [", "."]
                      for i in tokenizer.encode(s, add_special_tokens=False)})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(Qwen2Config(
        vocab_size=151646, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=False))
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0, 0.1)
        for layer in model.model.layers:
            attn = layer.self_attn
            for weight in (attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight, attn.o_proj.weight):
                weight.normal_(0, 1.0)
        head = model.lm_head.weight
        rows = torch.randn(len(allowed), head.shape[1])
        head.zero_()
        head[allowed] = rows
    model.save_pretrained(root / "model")
    return root


def _args(root, out, *extra):
    return _cli_args(root, out, "--max-new-tokens", "8", *extra)


def _launch(root, out, *extra, processes=2):
    """`launch local -n 2 --cpu-devices 1 -- rerank ...` (the command line _cli_args gives)."""
    rerank = ["rerank", "--model", str(root / "model"), "--run", str(root / "run.trec"), "--corpus",
              str(root / "corpus.jsonl"), "--queries", str(root / "queries.jsonl"), "--out", str(out),
              "--max-new-tokens", "8", "--slots", "2", "--dtype", "float32", *extra]
    cmd = [sys.executable, "-m", "reasonrank_jax", "launch", "local", "-n", str(processes), "--cpu-devices", "1",
           "--", *rerank]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()},
                          timeout=300)


def _lines(path):
    return open(path).read().splitlines(keepends=True)


def _qids(path):
    return [json.loads(line)["qid"] for line in open(path)]


def test_query_process_is_a_stable_hash_that_splits_the_test_queries():
    assert [query_process(q, 2) for q in QIDS] == [1, 0, 1]  # sha256: the same in every process, run and version
    assert [query_process(q, 3) for q in QIDS] == [0, 1, 2]
    assert all(query_process(q, 1) == 0 for q in QIDS)


def test_two_processes_write_the_single_process_run_and_resume(answering_reranker, tmp_path, capsys):
    from reasonrank_jax.inference import cli

    root = answering_reranker
    single, multi = tmp_path / "single", tmp_path / "multi"
    assert cli.main(_args(root, single)) == 0
    reference = (single / "run.trec").read_text()
    windows = [json.loads(line) for line in open(single / "windows.jsonl")]
    assert any(w["parse_ok"] for w in windows)  # the model answers: the rankings are not the first stage's
    first_stage = {q: [f"{q}-d{j}" for j in range(25)] for q in QIDS}
    assert any([d for _, _, d in rows] != first_stage[q] for q, rows in _read_trec(single / "run.trec").items())

    result = _launch(root, multi)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "6 windows to run over 2 processes (2 in process 0)" in result.stdout
    assert (multi / "run.trec").read_text() == reference
    assert sorted(_lines(multi / "windows.jsonl")) == sorted(_lines(single / "windows.jsonl"))
    assert [json.loads(line)["qid"] for line in open(multi / "windows.jsonl")] == ["q0"] * 2 + ["q1"] * 2 + ["q2"] * 2
    by_process = [_qids(multi / f"done.process-{i}.jsonl") for i in range(2)]
    assert sorted(by_process[0]) == ["q1"] and sorted(by_process[1]) == ["q0", "q2"]  # non-empty, disjoint
    assert sorted(os.listdir(multi)) == sorted(
        ["config.yaml", "settings.json", "run.trec", "windows.jsonl", "summary.json"] +
        [f"{kind}.process-{i}.jsonl" for kind in ("done", "windows") for i in range(2)])
    summary, single_summary = (json.loads((d / "summary.json").read_text()) for d in (multi, single))
    keys = ("queries", "windows", "tokens_in", "tokens_out", "parse_failures")
    assert {k: summary[k] for k in keys} == {k: single_summary[k] for k in keys} and summary["processes"] == 2
    merged_windows = (multi / "windows.jsonl").read_text()

    # Killed midway: process 1 had logged one of its queries and was writing the other's line; the merged outputs
    # were never written. The same command resumes: process 1 redoes that query (its windows too), process 0 has
    # nothing left to do but still takes part.
    first, second = _lines(multi / "done.process-1.jsonl")
    (multi / "done.process-1.jsonl").write_text(first + second[:30])
    for name in ("run.trec", "windows.jsonl", "summary.json"):
        (multi / name).unlink()
    resumed = _launch(root, multi)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "(2 already done), 2 windows to run over 2 processes (0 in process 0)" in resumed.stdout
    assert (multi / "run.trec").read_text() == reference
    assert (multi / "windows.jsonl").read_text() == merged_windows
    assert _lines(multi / "done.process-1.jsonl") == [first, second]  # the torn line cut, the query redone
    assert _qids(multi / "done.process-0.jsonl") == ["q1"]
    assert len(_lines(multi / "windows.process-1.jsonl")) == 4  # the unfinished query's windows were redone

    # One process resumes the 2-process job: only the query missing from every done*.jsonl is decoded.
    lines = _lines(multi / "done.process-1.jsonl")
    (multi / "done.process-1.jsonl").write_text(lines[0])
    lost = json.loads(lines[1])["qid"]
    (multi / "run.trec").unlink()
    capsys.readouterr()
    assert cli.main(_args(root, multi)) == 0
    assert "(2 already done), 2 windows to run," in capsys.readouterr().out
    assert _qids(multi / "done.jsonl") == [lost]
    assert (multi / "run.trec").read_text() == reference
    assert (multi / "windows.jsonl").read_text() == merged_windows

    # A finished job rerun: nothing decoded, the same run written again.
    (multi / "run.trec").unlink()
    assert cli.main(_args(root, multi)) == 0
    assert "(3 already done), 0 windows to run," in capsys.readouterr().out
    assert (multi / "run.trec").read_text() == reference
    assert (multi / "windows.jsonl").read_text() == merged_windows
    assert [len(_lines(multi / name)) for name in ("done.jsonl", "done.process-0.jsonl", "done.process-1.jsonl")] == [
        1, 1, 1]


def test_process_0_refusing_the_out_directory_stops_both_processes(answering_reranker, tmp_path):
    """Process 0 alone checks --out; the other learns of its refusal at the start barrier and exits too (2)."""
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("not a rerank's\n")
    result = _launch(answering_reranker, out)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert "holds files this command did not write" in result.stderr
    assert sorted(os.listdir(out)) == ["notes.txt"]


def test_a_failure_in_process_1_stops_both_processes_before_anything_is_written(answering_reranker, tmp_path):
    """Process 1's queries need a document the corpus lacks: process 0 (which needs none of them) learns of it at
    the start barrier, both exit 2 and --out is not created, so the corrected command may use other settings."""
    root = tmp_path / "data"
    shutil.copytree(answering_reranker, root)
    (root / "corpus.jsonl").write_text("".join(line for line in open(answering_reranker / "corpus.jsonl")
                                               if '"q0-d7"' not in line))  # q0 is process 1's
    result = _launch(root, tmp_path / "o")
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert "process 1 of 2 failed (start)" in result.stderr and "'q0-d7'" in result.stderr
    assert not (tmp_path / "o").exists()
