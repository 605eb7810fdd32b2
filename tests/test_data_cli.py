"""`reasonrank-jax data filter | stats | build` end to end."""

import json
import os

import pyarrow.parquet as pq

from _data_helpers import BAD_LINES, make_raw_rows, pytrec_ndcg10, write_raw_dir
from reasonrank_jax.cli import main


def test_filter_writes_kept_rows_report_and_stage_files(tmp_path, qwen2_tokenizer_dir, capsys):
    rows = make_raw_rows(40)
    raw = write_raw_dir(str(tmp_path / "raw"), rows)
    path = os.path.join(raw, "training_data_all.jsonl")
    out, report, sft, rl = (str(tmp_path / n) for n in ("kept.jsonl", "report.json", "sft.json", "rl.parquet"))
    assert main(["data", "filter", path, "--out", out, "--report", report, "--raw-dir", raw,
                 "--tokenizer", qwen2_tokenizer_dir, "--sft-out", sft, "--rl-out", rl]) == 0
    kept = [json.loads(line) for line in open(out)]
    expected = [r for r in rows if pytrec_ndcg10(r["final_list"], r["relevant_docids"]) >= 0.4]
    assert kept == expected
    rep = json.load(open(report))
    assert rep["total"] == 40 + len(BAD_LINES) and rep["bad"] == len(BAD_LINES)
    assert rep["kept"] + rep["dropped"] + rep["bad"] == rep["total"]
    assert rep["kept_per_domain"] == {d: sum(r["dataset"] == d for r in expected)
                                      for d in sorted({r["dataset"] for r in expected})}
    sft_records, rl_records = json.load(open(sft)), pq.read_table(rl).to_pylist()
    assert len(sft_records) + len(rl_records) == len(expected)
    assert {(r["dataset"], r["qid"]) for r in sft_records}.isdisjoint({(r["dataset"], r["qid"]) for r in rl_records})
    assert set(sft_records[0]) >= {"system", "instruction", "output"}
    assert set(rl_records[0]) >= {"prompt", "label", "initial_list", "final_list", "relevant_docids", "dataset"}
    assert "kept" in capsys.readouterr().out


def test_stats_counts_and_drop_share(tmp_path, qwen2_tokenizer_dir, capsys):
    rows = make_raw_rows(30, seed=2)
    raw = write_raw_dir(str(tmp_path / "raw"), rows, bad_lines=False)
    assert main(["data", "stats", os.path.join(raw, "training_data_all.jsonl"), "--raw-dir", raw,
                 "--tokenizer", qwen2_tokenizer_dir, "--json"]) == 0
    out = capsys.readouterr().out
    stats = json.loads(out[out.index("{"):])
    drops = [pytrec_ndcg10(r["final_list"], r["relevant_docids"]) < 0.4 for r in rows]
    assert stats["rows"] == 30 and abs(stats["drop_share"] - sum(drops) / 30) < 1e-12
    for d, v in stats["domains"].items():
        assert v["rows"] == sum(r["dataset"] == d for r in rows)
    assert set(stats["lengths"]) == {"reasoning_tokens", "response_tokens", "prompt_tokens"}
    assert stats["lengths"]["prompt_tokens"]["p100"] >= stats["lengths"]["prompt_tokens"]["p50"] > 0


def test_build_and_bad_input_exit_code(tmp_path, capsys):
    raw = write_raw_dir(str(tmp_path / "raw"), make_raw_rows(20))
    assert main(["data", "build", "raw", "--manual-dir", raw, "--data-dir", str(tmp_path / "tfds"),
                 "--alpha", "0"]) == 0
    out = capsys.readouterr().out
    assert "22 rows: 20 kept, 0 dropped, 2 bad" in out
    assert main(["data", "build", "sft", "--manual-dir", str(tmp_path / "nope"),
                 "--data-dir", str(tmp_path / "tfds")]) == 2
    assert "manual directory not found" in capsys.readouterr().err
