"""Raw rows, the self-consistency filter against pytrec_eval, splits, converters."""

import json
import os

import pytest

from _data_helpers import BAD_LINES, make_raw_rows, pytrec_ndcg10, write_raw_dir
from reasonrank_jax.data import (RawTexts, Report, filter_raw, ranking_label, raw_to_rl, raw_to_sft,
                                 self_consistency_scores, split_of, stage_of)
from reasonrank_jax.data.records import read_raw_rows


@pytest.fixture
def raw_dir(tmp_path):
    return write_raw_dir(str(tmp_path), make_raw_rows(40))


def test_scores_match_pytrec_eval():
    rows = make_raw_rows(200, seed=1)
    ours = self_consistency_scores(rows)
    ref = [pytrec_ndcg10(r["final_list"], r["relevant_docids"]) for r in rows]
    assert ours == pytest.approx(ref, abs=1e-12)
    assert any(0 < s < 1 for s in ref) and 0.0 in ref  # the sample covers partial and empty cases


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.4, 0.7, 1.0])
def test_filter_keeps_exactly_rows_at_or_above_alpha(raw_dir, alpha):
    path = os.path.join(raw_dir, "training_data_all.jsonl")
    report = Report()
    kept = {row["qid"] for _, row, _ in filter_raw(path, alpha, report)}
    rows = make_raw_rows(40)
    expected = {r["qid"] for r in rows if pytrec_ndcg10(r["final_list"], r["relevant_docids"]) >= alpha - 1e-12}
    assert kept == expected
    # every input row accounted for: kept + dropped + bad = lines with content
    assert report.total == 40 + len(BAD_LINES)
    assert report.num_kept == len(kept) and report.accounted()
    assert len(report.errors) == len(BAD_LINES)
    assert sum(report.kept.values()) + report.num_dropped == 40


def test_filter_boundary_is_inclusive(tmp_path):
    # final [a, b], positive b: nDCG@10 = (1/log2 3) / 1
    row = {"dataset": "x", "qid": "1", "initial_list": ["a", "b"], "final_list": ["a", "b"],
           "reasoning": "", "relevant_docids": ["b"]}
    path = tmp_path / "raw.jsonl"
    path.write_text(json.dumps(row) + "\n")
    score = pytrec_ndcg10(["a", "b"], ["b"])
    assert len(list(filter_raw(str(path), score - 1e-9))) == 1
    assert len(list(filter_raw(str(path), score + 1e-9))) == 0


def test_bad_rows_named_with_file_and_line(raw_dir):
    path = os.path.join(raw_dir, "training_data_all.jsonl")
    report = Report()
    list(read_raw_rows(path, report))
    lines = open(path).read().split("\n")
    for err, (text, what) in zip(report.errors, BAD_LINES):
        lineno = lines.index(text) + 1
        assert err.startswith(f"{path}:{lineno}") and what in err
    with pytest.raises(Exception, match="invalid JSON"):
        list(read_raw_rows(path, Report(), strict=True))


def test_splits_are_deterministic_hashes():
    keys = [("biology", f"q{i}") for i in range(2000)]
    a = [split_of(d, q, 0.1) for d, q in keys]
    assert a == [split_of(d, q, 0.1) for d, q in keys]
    assert 0.07 < a.count("validation") / len(a) < 0.13
    stages = [stage_of(d, q) for d, q in keys]
    assert 0.45 < stages.count("sft") / len(stages) < 0.55
    assert split_of("biology", "q1", 0.0) == "train" and split_of("biology", "q1", 1.0) == "validation"


def test_converters(raw_dir, qwen2_tokenizer_dir):
    from reasonrank_jax.text import build_messages, load_tokenizer

    tokenizer = load_tokenizer(qwen2_tokenizer_dir)
    texts = RawTexts(raw_dir)
    row = make_raw_rows(40)[2]  # msmarco: documents with titles, from a jsonl map
    sft = raw_to_sft(row, texts, tokenizer)
    positions = [row["initial_list"].index(d) + 1 for d in row["final_list"]]
    assert sft["output"] == (f"<think>{row['reasoning']}</think> <answer>"
                             + " > ".join(f"[{p}]" for p in positions) + "</answer>")
    messages = build_messages(tokenizer, texts.query(row), texts.passages(row))
    assert sft["system"] == messages[0]["content"] and sft["instruction"] == messages[1]["content"]
    first = texts.passages(row)[0]
    assert first == {"docid": row["initial_list"][0], "title": f"Title {row['initial_list'][0]}",
                     "text": f"Text of {row['initial_list'][0]}: some words about msmarco and more."}
    rl = raw_to_rl(row, texts, tokenizer)
    assert rl["prompt"] == messages and rl["label"] == ranking_label(row["initial_list"], row["final_list"])
    assert {k: rl[k] for k in ("initial_list", "final_list", "relevant_docids", "dataset")} == \
        {k: row[k] for k in ("initial_list", "final_list", "relevant_docids", "dataset")}
    assert ranking_label(["a", "b", "c"], ["c", "a", "b"]) == "[3] > [1] > [2]"
    missing = dict(row, qid="nope")
    with pytest.raises(Exception, match="query 'nope'"):
        raw_to_sft(missing, texts, tokenizer)
