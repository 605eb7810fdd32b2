"""TREC run/qrels readers and writers: round trips, gzip, docids with spaces, malformed input."""

import gzip
import random
from pathlib import Path

import pytest

from reasonrank_jax.errors import InputError
from reasonrank_jax.eval import trec

BRIGHT = Path("/work/shared/data/bright")
needs_bright = pytest.mark.skipif(not BRIGHT.is_dir(), reason="BRIGHT data not present")


def _random_run(seed: int) -> dict:
    rng = random.Random(seed)
    run = {}
    for q in range(5):
        docids = [f"doc{rng.randrange(40)}" for _ in range(30)] + ["dir/Memory Management_2_0.txt", "a  b"]
        run[f"q{q}"] = {d: rng.choice([0.5, 1.0, rng.uniform(-3, 3), 1e-300]) for d in docids}
    return run


@pytest.mark.parametrize("name", ["run.trec", "run.trec.gz"])
def test_run_round_trip_ranks_by_score_then_docid_descending(tmp_path, name):
    run = _random_run(0)
    path = tmp_path / name
    trec.write_run(path, run, tag="mytag")
    assert path.read_bytes()[:2] == b"\x1f\x8b" if name.endswith(".gz") else True
    assert trec.read_run(path) == run  # scores survive exactly, docids with spaces too
    lines = trec.read_run_lists(path)
    for qid, scores in run.items():
        expected = sorted(sorted(scores, reverse=True), key=lambda d: -scores[d])  # stable: docid desc within ties
        assert [e.docid for e in lines[qid]] == expected
        assert [e.rank for e in lines[qid]] == list(range(1, len(scores) + 1))
    with trec.open_text(path) as f:
        assert all(line.rstrip("\n").endswith(" mytag") for line in f)


def test_gzip_recognised_by_magic_bytes_not_name(tmp_path):
    path = tmp_path / "run.txt"
    path.write_bytes(gzip.compress(b"q1 Q0 d1 1 2.5 t\nq1 Q0 d2 2 1.5 t\n"))
    assert trec.read_run(path) == {"q1": {"d1": 2.5, "d2": 1.5}}


def test_docid_with_spaces_keeps_original_whitespace_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "run.trec"
    path.write_text("\n  q1 Q0 a b\tc 1 0.9 tag\n\nq1   Q0 x 2 0.5 tag  \r\n")
    assert trec.read_run(path) == {"q1": {"a b\tc": 0.9, "x": 0.5}}
    qrels_path = tmp_path / "qrels"
    qrels_path.write_text("q1 0 a b\tc 2\n\nq1 0 x 0\nq2 0 y -1\n")
    assert trec.read_qrels(qrels_path) == {"q1": {"a b\tc": 2, "x": 0}, "q2": {"y": -1}}


def test_run_lists_follow_rank_column(tmp_path):
    path = tmp_path / "run.trec"
    path.write_text("q Q0 c 3 0.1 t\nq Q0 a 1 0.3 t\nq Q0 b 2 0.2 t\n")
    assert [e.docid for e in trec.read_run_lists(path)["q"]] == ["a", "b", "c"]
    assert trec.read_run_lists(path)["q"][0] == trec.RunEntry("a", 1, 0.3)


@pytest.mark.parametrize("name", ["qrels.txt", "qrels.txt.gz"])
def test_qrels_round_trip(tmp_path, name):
    qrels = {"1": {"d a": 1, "d2": 0, "d3": 3}, "2": {"x": -1}}
    trec.write_qrels(tmp_path / name, qrels)
    assert trec.read_qrels(tmp_path / name) == qrels


@pytest.mark.parametrize("text, line, words", [
    ("q Q0 a 1 0.5 t\n\nq Q0 b 2\n", 3, "expected 6 fields"),
    ("q Q0 a 1 0.5 t\nq Q0 b 2 high t\n", 2, "score"),
    ("q Q0 a one 0.5 t\n", 1, "rank"),
    ("q Q0 a 1 nan t\n", 1, "NaN"),
    ("q Q0 a 1 0.5 t\nq Q0 a 2 0.4 t\n", 2, "twice"),
])
def test_malformed_run_names_file_and_line(tmp_path, text, line, words):
    path = tmp_path / "bad.trec"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        trec.read_run(path)
    assert err.value.path == str(path) and err.value.line == line
    assert f"{path}:{line}:" in str(err.value) and words in str(err.value)


@pytest.mark.parametrize("text, line", [("q 0 a\n", 1), ("q 0 a 1\nq 0 b 1.5\n", 2), ("q 0 a 1\nq 0 a 0\n", 2)])
def test_malformed_qrels_names_file_and_line(tmp_path, text, line):
    path = tmp_path / "qrels.gz"
    path.write_bytes(gzip.compress(text.encode()))
    with pytest.raises(InputError) as err:
        trec.read_qrels(path)
    assert (err.value.path, err.value.line) == (str(path), line)


def test_missing_and_corrupt_files_are_input_errors(tmp_path):
    with pytest.raises(InputError):
        trec.read_run(tmp_path / "absent.trec")
    truncated = tmp_path / "cut.trec.gz"
    truncated.write_bytes(gzip.compress(b"q Q0 a 1 0.5 t\n" * 1000)[:60])
    with pytest.raises(InputError):
        trec.read_run(truncated)


def test_writer_refuses_ids_it_could_not_read_back(tmp_path):
    with pytest.raises(ValueError):
        trec.write_run(tmp_path / "r", {"q 1": {"a": 1.0}})
    with pytest.raises(ValueError):
        trec.write_run(tmp_path / "r", {"q": {"a\nb": 1.0}})
    with pytest.raises(ValueError):
        trec.write_run(tmp_path / "r", {"q": {"a": 1.0}}, tag="two words")


@needs_bright
def test_real_stackoverflow_run_with_spaced_docids():
    path = BRIGHT / "runs/reasonir/stackoverflow.trec.gz"
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    spaced = [line.split() for line in lines if len(line.split()) > 6]
    assert len(spaced) == 12
    lists = trec.read_run_lists(path)
    assert sum(len(v) for v in lists.values()) == len(lines)
    run = trec.read_run(path)
    for fields in spaced:  # independent parse: in this file the docids hold single spaces
        qid, docid, rank, score = fields[0], " ".join(fields[2:-3]), int(fields[-3]), float(fields[-2])
        assert run[qid][docid] == score
        assert lists[qid][rank - 1].docid == docid
    assert "pytorch_torch_tensor_functions/Memory Management_2_0.txt" in run["4"]
