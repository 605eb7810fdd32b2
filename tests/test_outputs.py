"""Outputs are never destroyed: atomic writes, ownership of output files and directories, resolved configs that
load back, settings recorded only once a job has started, a closed pipe, --help without jax."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from _data_helpers import make_raw_rows, write_raw_dir
from reasonrank_jax.cli import main
from reasonrank_jax.errors import InputError
from reasonrank_jax.outputs import OutputFiles, atomic_path, atomic_write


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(str(target)) as tmp:
            Path(tmp).write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]
    atomic_write(str(target), "new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["f.txt"]


def test_output_files_replace_only_what_they_wrote(tmp_path):
    out = tmp_path / "kept.jsonl"
    outputs = OutputFiles("data filter", {"--out": str(out)})
    outputs.write_text("--out", "first\n")
    outputs.record_config(_Config())
    again = OutputFiles("data filter", {"--out": str(out)})  # a rerun may replace its own file
    again.write_text("--out", "second\n")
    again.record_config(_Config())
    out.write_text("edited by hand\n")
    with pytest.raises(InputError, match="changed since"):
        OutputFiles("data filter", {"--out": str(out)})
    with pytest.raises(InputError, match="not written by 'reasonrank-jax data build'"):
        OutputFiles("data build", {"--out": str(out)})
    OutputFiles("data filter", {"--out": str(out)}, overwrite=True).write_text("--out", "third\n")
    assert out.read_text() == "third\n"


@dataclasses.dataclass(frozen=True)
class _Config:
    alpha: float = 0.4


@pytest.fixture
def raw_file(tmp_path):
    raw = write_raw_dir(str(tmp_path / "raw"), make_raw_rows(12), bad_lines=False)
    return os.path.join(raw, "training_data_all.jsonl")


def test_filter_rerun_sidecar_config_and_foreign_report(raw_file, tmp_path, capsys):
    out, report = tmp_path / "kept.jsonl", tmp_path / "report.json"
    assert main(["data", "filter", raw_file, "--out", str(out), "--report", str(report), "alpha=0.2"]) == 0
    first = out.read_bytes()
    sidecar = yaml.safe_load((tmp_path / "kept.jsonl.config.yaml").read_text())
    assert sidecar["alpha"] == 0.2 and sidecar["raw"] == raw_file and sidecar["out"] == str(out)
    # The sidecar is a config: running from it gives the same outputs, replacing the command's own files.
    assert main(["data", "filter", "--config", str(tmp_path / "kept.jsonl.config.yaml")]) == 0
    assert out.read_bytes() == first
    report.write_text("my notes")
    capsys.readouterr()
    assert main(["data", "filter", raw_file, "--out", str(out), "--report", str(report)]) == 2
    assert "--overwrite" in capsys.readouterr().err and report.read_text() == "my notes"
    assert main(["data", "filter", raw_file, "--out", str(out), "--report", str(report), "--overwrite"]) == 0
    assert '"total": 12' in report.read_text()


def test_smoke_reruns_into_its_own_dir_and_overwrite_keeps_unrelated_files(tmp_path, capsys):
    out = tmp_path / "ckpt"
    assert main(["smoke", "--out", str(out), "--hidden", "32", "--layers", "1"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["hidden"] == 32
    assert main(["smoke", "--out", str(out), "--hidden", "32", "--layers", "1"]) == 0  # its own: replaced
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["smoke", "--out", str(foreign)]) == 2
    assert sorted(os.listdir(foreign)) == ["notes.txt"]
    assert main(["smoke", "--out", str(foreign), "--overwrite"]) == 0
    assert (foreign / "notes.txt").read_text() == "keep me" and (foreign / "config.json").exists()


def _rerank_argv(root, out, model):
    return ["rerank", "--model", str(model), "--run", str(root / "run.trec"), "--corpus", str(root / "corpus.jsonl"),
            "--queries", str(root / "queries.jsonl"), "--out", str(out), "--max-new-tokens", "4", "--slots", "2",
            "--dtype", "float32", "--max-queries", "1"]


def test_rerank_that_failed_to_start_does_not_block_the_corrected_command(tiny_reranker, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_rerank_argv(tiny_reranker, out, tiny_reranker / "modle")) == 2
    assert not out.exists() or os.listdir(out) == []
    assert main(_rerank_argv(tiny_reranker, out, tiny_reranker / "model")) == 0
    assert {"config.yaml", "settings.json", "run.trec", "done.jsonl"} <= set(os.listdir(out))
    # The resolved config loads back with --config and resumes the same job.
    assert main(["rerank", "--config", str(out / "config.yaml")]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["max_queries"] == 1


def test_rerank_refuses_a_foreign_done_log(tiny_reranker, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_rerank_argv(tiny_reranker, out, tiny_reranker / "model")) == 0
    done = out / "done.jsonl"
    done.write_text(done.read_text() + "q9 Q0 d1 1 2.0 bm25\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main(_rerank_argv(tiny_reranker, out, tiny_reranker / "model")) == 2
    assert f"{done}:2" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_eval_into_a_closed_pipe_stops_quietly(tmp_path):
    run = tmp_path / "run.trec"
    run.write_text("".join(f"q{q} Q0 d{d} {d + 1} {100 - d} x\n" for q in range(300) for d in range(3)))
    qrels = tmp_path / "qrels"
    qrels.write_text("".join(f"q{q} 0 d1 1\n" for q in range(300)))
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    process = subprocess.Popen([sys.executable, "-m", "reasonrank_jax", "eval", str(run), "--qrels", str(qrels),
                                "--per-query"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    process.stdout.readline()
    process.stdout.close()  # `| head -1`
    assert process.wait(timeout=120) == 141
    assert process.stderr.read() == b""


def test_help_imports_no_jax_numpy_or_transformers():
    code = ("import sys\nfrom reasonrank_jax.cli import build_parser\nbuild_parser()\n"
            "print(sorted(m for m in ('jax', 'numpy', 'transformers', 'torch') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == "[]"
