"""TFDS array_record builders: round trips with every row accounted for, no TensorFlow."""

import gzip
import json
import os
import shutil
import sys

import numpy as np
import pytest

from _data_helpers import BAD_LINES, make_raw_rows, pytrec_ndcg10, write_raw_dir

BRIGHT = "/work/shared/data/bright"


def _text(x):
    return x.decode() if isinstance(x, bytes) else x


def _texts(xs):
    return [_text(x) for x in xs]


def _all_records(version_dir):
    from reasonrank_jax.data.builders import data_source
    import tensorflow_datasets as tfds

    splits = tfds.builder_from_directory(version_dir).info.splits.keys()
    return {s: [data_source(version_dir, s)[i] for i in range(len(data_source(version_dir, s)))] for s in splits}


def test_import_does_not_pull_tensorflow():
    import reasonrank_jax.data  # noqa: F401
    import reasonrank_jax.data.builders  # noqa: F401
    assert "tensorflow" not in sys.modules


def test_raw_round_trip(tmp_path):
    from reasonrank_jax.data.builders import BuildOptions, build

    rows = make_raw_rows(40)
    raw = write_raw_dir(str(tmp_path / "raw"), rows, drop_query="q7")
    version_dir, builder = build("raw", raw, str(tmp_path / "tfds"),
                                 BuildOptions(alpha=0.4, validation_fraction=0.3))
    assert "tensorflow" not in sys.modules
    assert os.path.isfile(os.path.join(version_dir, "build_report.json"))
    records = _all_records(version_dir)
    assert set(records) == {"train", "validation"}
    by_qid = {_text(r["qid"]): (split, r) for split, rs in records.items() for r in rs}
    expected = {r["qid"]: r for r in rows
                if pytrec_ndcg10(r["final_list"], r["relevant_docids"]) >= 0.4 and r["qid"] != "q7"}
    assert set(by_qid) == set(expected)
    report = builder.report
    assert report.total == 40 + len(BAD_LINES) and report.accounted()
    assert len(report.errors) == len(BAD_LINES) + (rows[7]["qid"] in {r["qid"] for r in rows
                                                   if pytrec_ndcg10(r["final_list"], r["relevant_docids"]) >= 0.4})
    from reasonrank_jax.data import split_of
    for qid, (split, rec) in by_qid.items():
        row = expected[qid]
        assert split == split_of(row["dataset"], qid, 0.3)
        for key in ("initial_list", "final_list", "relevant_docids"):
            assert _texts(rec[key]) == row[key]
        assert _text(rec["reasoning"]) == row["reasoning"] and _text(rec["dataset"]) == row["dataset"]
        assert len(rec["passages"]) == len(row["initial_list"])
        assert float(rec["ndcg_at_10"]) == pytest.approx(pytrec_ndcg10(row["final_list"], row["relevant_docids"]),
                                                         abs=1e-6)
    msmarco = next(r for _, r in by_qid.values() if _text(r["dataset"]) == "msmarco")
    assert _text(msmarco["passages"][0]).startswith("Title: Title msm-")


def test_sft_and_rl_tokenized_round_trip(tmp_path, qwen2_tokenizer_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from reasonrank_jax.data import RawTexts, raw_to_rl, raw_to_sft
    from reasonrank_jax.data.builders import BuildOptions, build, split_lengths
    from reasonrank_jax.text import load_tokenizer

    tok = load_tokenizer(qwen2_tokenizer_dir)
    rows = make_raw_rows(24, seed=3)
    raw = write_raw_dir(str(tmp_path / "raw"), rows, bad_lines=False)
    texts = RawTexts(raw)
    sft_dir, rl_dir = tmp_path / "sft", tmp_path / "rl"
    sft_dir.mkdir(), rl_dir.mkdir()
    sft = [raw_to_sft(r, texts, tok) for r in rows]
    sft.append({"system": "s", "output": "no instruction"})  # a bad record, reported
    json.dump(sft, open(sft_dir / "reasonrank_data_sft.json", "w"))
    rl = [raw_to_rl(r, texts, tok) for r in rows]
    pq.write_table(pa.Table.from_pylist(rl), rl_dir / "reasonrank_data_rl.parquet")

    sft_lengths = sorted(len(tok(tok.apply_chat_template(
        [{"role": "system", "content": r["system"]}, {"role": "user", "content": r["instruction"]},
         {"role": "assistant", "content": r["output"]}], tokenize=False), add_special_tokens=False)["input_ids"])
        for r in sft[:-1])
    max_length = sft_lengths[len(sft_lengths) // 2]  # half the examples are over-length
    version_dir, builder = build("sft", str(sft_dir), str(tmp_path / "tfds"),
                                 BuildOptions(tokenizer_dir=qwen2_tokenizer_dir, max_length=max_length,
                                              overflow="drop", validation_fraction=0.0))
    assert version_dir.endswith(os.path.join("reasonrank_sft", "tokenized", "1.0.0"))
    records = _all_records(version_dir)["train"]
    counts = builder.token_counts
    assert counts.get("kept", 0) == len(records) == sum(1 for n in sft_lengths if n <= max_length)
    assert builder.report.total == 25 and builder.report.accounted() and len(builder.report.errors) == 1
    np.testing.assert_array_equal(split_lengths(version_dir), [len(r["input_ids"]) for r in records])
    for rec in records:
        source = sft[int(rec["source_index"])]
        assert _text(rec["output"]) == source["output"] and _text(rec["instruction"]) == source["instruction"]
        assert tok.decode(rec["input_ids"][int(rec["prompt_length"]):]).startswith(source["output"])

    version_dir, builder = build("rl", str(rl_dir), str(tmp_path / "tfds"),
                                 BuildOptions(tokenizer_dir=qwen2_tokenizer_dir, max_prompt_length=10**6,
                                              validation_fraction=0.25))
    records = _all_records(version_dir)
    assert sum(len(v) for v in records.values()) == 24 and builder.report.accounted()
    for split, recs in records.items():
        np.testing.assert_array_equal(split_lengths(version_dir, split), [len(r["prompt_ids"]) for r in recs])
        for rec in recs:
            source = rl[int(rec["source_index"])]
            assert _text(rec["label"]) == source["label"]
            assert _texts(rec["prompt"]["content"]) == [m["content"] for m in source["prompt"]]
            assert _texts(rec["initial_list"]) == source["initial_list"]
    assert "tensorflow" not in sys.modules


def test_bright_real_examples_and_run(tmp_path):
    from reasonrank_jax.data.builders import BuildOptions, build

    root = tmp_path / "bright"
    (root / "examples").mkdir(parents=True)
    (root / "runs" / "reasonir").mkdir(parents=True)
    (root / "documents").mkdir()
    for ds in ("pony", "stackoverflow"):
        shutil.copy(f"{BRIGHT}/examples/{ds}.jsonl.gz", root / "examples")
        shutil.copy(f"{BRIGHT}/runs/reasonir/{ds}.trec.gz", root / "runs" / "reasonir")
    # a corpus for pony only, covering every docid of its run
    with gzip.open(f"{BRIGHT}/runs/reasonir/pony.trec.gz", "rt") as f:
        pony_docs = sorted({line.split()[2] for line in f})
    with open(root / "documents" / "pony.jsonl", "w") as f:
        for d in pony_docs:
            f.write(json.dumps({"id": d, "content": f"text of {d}"}) + "\n")
    version_dir, builder = build("bright", str(root), str(tmp_path / "tfds"), BuildOptions(top_k=20))
    records = _all_records(version_dir)
    assert set(records) == {"pony", "stackoverflow"}
    for ds, recs in records.items():
        with gzip.open(f"{BRIGHT}/examples/{ds}.jsonl.gz", "rt") as f:
            examples = [json.loads(line) for line in f]
        assert [_text(r["qid"]) for r in recs] == [str(e["id"]) for e in examples]
        assert [_texts(r["gold_ids"]) for r in recs] == [e["gold_ids"] for e in examples]
        # candidates: the run's top-20 by score (ties: docid descending), independently re-read
        run = {}
        with gzip.open(f"{BRIGHT}/runs/reasonir/{ds}.trec.gz", "rt") as f:
            for line in f:
                p = line.split()
                run.setdefault(p[0], []).append((float(p[-2]), " ".join(p[2:-3])))
        for r in recs:
            top = [d for _, d in sorted(run[_text(r["qid"])], reverse=True)[:20]]  # trec_eval: ties by docid desc
            assert _texts(r["candidates"]) == top
            assert len(r["candidate_texts"]) == (20 if ds == "pony" else 0)
    spaced = [d for r in records["stackoverflow"] for d in _texts(r["candidates"]) if " " in d]
    assert spaced  # the docids with spaces survive
    assert builder.report.accounted() and not builder.report.errors
    assert "tensorflow" not in sys.modules


# ---------------------------------------------------------------------------------------------- bad manual dirs

EXPECTED_LAYOUT = {"raw": "training_data_all.jsonl", "sft": "*.json", "rl": "*.parquet", "bright": "examples/"}


@pytest.mark.parametrize("contents", ["empty", "missing", "stray file"])
@pytest.mark.parametrize("kind", list(EXPECTED_LAYOUT))
def test_manual_dir_without_inputs_is_an_input_error(tmp_path, kind, contents):
    from reasonrank_jax.data.builders import build
    from reasonrank_jax.errors import InputError

    manual = tmp_path / "manual"
    if contents != "missing":
        manual.mkdir()
    if contents == "stray file":
        (manual / "notes.txt").write_text("not an input")
    with pytest.raises(InputError) as err:
        build(kind, str(manual), str(tmp_path / "tfds"))
    assert str(err.value).startswith(str(manual))
    if contents != "missing":
        assert EXPECTED_LAYOUT[kind] in str(err.value)
    assert not (tmp_path / "tfds").exists()  # refused before anything was written


def test_raw_dir_without_text_maps_names_them(tmp_path):
    from reasonrank_jax.data.builders import build
    from reasonrank_jax.errors import InputError

    raw = write_raw_dir(str(tmp_path / "raw"), make_raw_rows(4), bad_lines=False)
    shutil.rmtree(os.path.join(raw, "id_doc"))
    with pytest.raises(InputError, match=r"missing id_doc/"):
        build("raw", raw, str(tmp_path / "tfds"))


# ---------------------------------------------------------------------------------------------- rebuilds

def _tree(root):
    """relative path -> file bytes (None for a directory): everything under root."""
    out = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(directory, name), root)] = None
        for name in files:
            path = os.path.join(directory, name)
            out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out


@pytest.fixture()
def first_build(tmp_path):
    """A raw build of 20 rows in a data dir that also holds another dataset and another config of this one."""
    from reasonrank_jax.data.builders import BuildOptions, build

    data_dir = tmp_path / "tfds"
    (data_dir / "other_dataset" / "text" / "1.0.0").mkdir(parents=True)
    (data_dir / "other_dataset" / "text" / "1.0.0" / "records").write_bytes(b"someone else's records")
    (data_dir / "reasonrank_raw" / "tokenized" / "1.0.0").mkdir(parents=True)
    (data_dir / "reasonrank_raw" / "tokenized" / "1.0.0" / "dataset_info.json").write_text("{}")
    raw = write_raw_dir(str(tmp_path / "raw_a"), make_raw_rows(20, seed=1), bad_lines=False)
    version_dir, _ = build("raw", raw, str(data_dir), BuildOptions(alpha=0.0))
    return data_dir, version_dir


def test_second_build_is_refused_and_the_first_is_unchanged(tmp_path, first_build):
    from reasonrank_jax.data.builders import BuildOptions, build
    from reasonrank_jax.errors import InputError

    data_dir, version_dir = first_build
    before = _tree(data_dir)
    assert os.path.relpath(version_dir, data_dir) == os.path.join("reasonrank_raw", "text", "1.0.0")
    assert {"build_report.json", "dataset_info.json"} <= set(os.listdir(version_dir))
    raw = write_raw_dir(str(tmp_path / "raw_b"), make_raw_rows(8, seed=2), bad_lines=False)
    with pytest.raises(InputError) as err:
        build("raw", raw, str(data_dir), BuildOptions(alpha=0.0))
    assert str(err.value) == f"{version_dir}: already built; pass --overwrite to rebuild"
    assert _tree(data_dir) == before


def test_overwrite_rebuilds_and_touches_nothing_else(tmp_path, first_build):
    from reasonrank_jax.data.builders import BuildOptions, build

    data_dir, version_dir = first_build
    before = _tree(data_dir)
    rows = make_raw_rows(8, seed=2)
    raw = write_raw_dir(str(tmp_path / "raw_b"), rows, bad_lines=False)
    rebuilt, builder = build("raw", raw, str(data_dir), BuildOptions(alpha=0.0, overwrite=True))
    assert rebuilt == version_dir
    assert sorted(_text(r["qid"]) for r in _all_records(version_dir)["train"]) == sorted(r["qid"] for r in rows)
    report = json.load(open(os.path.join(version_dir, "build_report.json")))
    assert report["total"] == builder.report.total == 8 and report["options"]["overwrite"] is True
    after = _tree(data_dir)
    inside = os.path.relpath(version_dir, data_dir)
    assert {k: v for k, v in after.items() if not k.startswith(inside)} == \
        {k: v for k, v in before.items() if not k.startswith(inside)}  # no staging dirs left, nothing else changed
    assert os.listdir(os.path.dirname(version_dir)) == ["1.0.0"]


def test_failed_overwrite_leaves_the_previous_build_intact(tmp_path, first_build):
    from reasonrank_jax.data.builders import BuildOptions, build
    from reasonrank_jax.errors import InputError

    data_dir, _ = first_build
    before = _tree(data_dir)
    raw = write_raw_dir(str(tmp_path / "raw_bad"), make_raw_rows(8, seed=2), bad_lines=True)
    with pytest.raises(InputError, match="training_data_all.jsonl:"):
        build("raw", raw, str(data_dir), BuildOptions(alpha=0.0, overwrite=True, strict=True))
    assert _tree(data_dir) == before


def test_a_version_dir_that_is_not_a_build_is_never_replaced(tmp_path):
    from reasonrank_jax.data.builders import BuildOptions, build
    from reasonrank_jax.errors import InputError

    version_dir = tmp_path / "tfds" / "reasonrank_raw" / "text" / "1.0.0"
    version_dir.mkdir(parents=True)
    (version_dir / "mine.txt").write_text("keep me")
    raw = write_raw_dir(str(tmp_path / "raw"), make_raw_rows(4), bad_lines=False)
    with pytest.raises(InputError, match="not a dataset build"):
        build("raw", raw, str(tmp_path / "tfds"), BuildOptions(overwrite=True))
    assert os.listdir(version_dir) == ["mine.txt"] and (version_dir / "mine.txt").read_text() == "keep me"
