"""BRIGHT examples loader: formats, qrels from gold_ids, excluded ids, errors with file/line/field."""

import gzip
import json
from pathlib import Path

import pytest

from reasonrank_jax.errors import InputError
from reasonrank_jax.eval import bright

BRIGHT = Path("/work/shared/data/bright")

EXAMPLES = [
    {"id": "0", "query": "why?", "reasoning": "r", "excluded_ids": ["N/A"], "gold_ids": ["a", "b c"],
     "gold_ids_long": ["A"], "gold_answer": "x"},
    {"id": 7, "query": "how?", "reasoning": "", "excluded_ids": ["e1", "e2"], "gold_ids": ["d"],
     "gold_ids_long": [], "gold_answer": ""},
]


def _write_jsonl(path: Path, records, gz: bool):
    text = "".join(json.dumps(r) + "\n" for r in records)
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())


@pytest.mark.parametrize("name", ["ex.jsonl", "ex.jsonl.gz", "ex.parquet"])
def test_loads_all_formats(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist([dict(r, id=str(r["id"])) for r in EXAMPLES]), path)
    else:
        _write_jsonl(path, EXAMPLES, gz=name.endswith(".gz"))
    examples, qrels, excluded = bright.load_bright_examples(path)
    assert [e["id"] for e in examples] == ["0", "7"]
    assert examples[0]["query"] == "why?" and examples[1]["gold_ids_long"] == []
    assert qrels == {"0": {"a": 1, "b c": 1}, "7": {"d": 1}}
    assert excluded == {"0": set(), "7": {"e1", "e2"}}


@pytest.mark.parametrize("bad, line, field", [
    ("{not json", 2, None),
    (json.dumps({"query": "q", "gold_ids": []}), 2, "id"),
    (json.dumps({"id": "9", "query": "q"}), 2, "gold_ids"),
    (json.dumps({"id": "9", "query": "q", "gold_ids": "a"}), 2, "gold_ids"),
    (json.dumps({"id": "9", "query": "q", "gold_ids": [], "excluded_ids": [3]}), 2, "excluded_ids"),
    (json.dumps(dict(EXAMPLES[0])), 2, "id"),  # duplicate id
    ("[1, 2]", 2, None),
])
def test_errors_name_file_line_and_field(tmp_path, bad, line, field):
    path = tmp_path / "ex.jsonl"
    path.write_text(json.dumps(EXAMPLES[0]) + "\n" + bad + "\n")
    with pytest.raises(InputError) as err:
        bright.load_bright_examples(path)
    assert (err.value.path, err.value.line, err.value.field) == (str(path), line, field)
    assert f"{path}:{line}" in str(err.value)


def test_dataset_names_and_paths(tmp_path):
    assert len(bright.DATASETS) == 12 and len(set(bright.DATASETS)) == 12
    assert bright.dataset_name("x/runs/biology.trec.gz") == "biology"
    assert bright.dataset_name("theoremqa_theorems.txt") == "theoremqa_theorems"
    with pytest.raises(InputError):
        bright.find_examples_file(tmp_path, "biology")
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "pony.jsonl").write_text("")
    assert bright.find_examples_file(tmp_path, "pony") == tmp_path / "examples" / "pony.jsonl"


@pytest.mark.skipif(not BRIGHT.is_dir(), reason="BRIGHT data not present")
@pytest.mark.parametrize("dataset", bright.DATASETS)
def test_real_bright_files(dataset):
    examples_path, run_path = bright.bright_paths(BRIGHT, dataset)
    assert examples_path.name == f"{dataset}.jsonl.gz" and run_path.name == f"{dataset}.trec.gz"
    examples, qrels, excluded = bright.load_bright_examples(examples_path)
    raw = [json.loads(line) for line in gzip.decompress(examples_path.read_bytes()).decode().splitlines()]
    assert len(examples) == len(raw) == len(qrels)
    for record in raw:
        assert qrels[str(record["id"])] == {d: 1 for d in record["gold_ids"]}
        assert excluded[str(record["id"])] == set(record["excluded_ids"]) - {"N/A"}
