"""reasonrank_jax.inputs: every format plain and gzip, the one field rule as rerank, data and eval read
it, one-line errors naming file and line, and resume logs that refuse files that are not theirs."""

import gzip
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from _data_helpers import make_raw_rows, write_raw_dir
from reasonrank_jax import inputs
from reasonrank_jax.cli import main
from reasonrank_jax.data import synth
from reasonrank_jax.data.records import RawTexts
from reasonrank_jax.errors import InputError
from reasonrank_jax.eval.bright import load_bright_examples
from reasonrank_jax.inference.cli import load_corpus, load_queries

QUERIES = {"q1": "what is a cell?", "2": "why\tis the sky blue?"}
DOCS = {"d1": {"title": "Cells", "text": "A cell is ..."}, "d 2": {"title": "", "text": "The sky ..."}}


def _write(path, data: bytes):
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def _jsonl(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def _parquet(path, records):
    pq.write_table(pa.Table.from_pylist(records), path)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(path.read_bytes()))
    return path


def _query_file(path):
    name = path.name.removesuffix(".gz")
    records = [{"_id": q, "text": t} for q, t in QUERIES.items()]
    if name.endswith(".parquet"):
        return _parquet(path, records)
    if name.endswith(".json") or name == "queries.list":
        return _write(path, json.dumps(records, indent=1).encode())
    if name.endswith((".tsv", ".txt")) or name == "queries.tab":
        return _write(path, "".join(f"{q}\t{t}\r\n" for q, t in QUERIES.items()).encode() + b"\n")
    return _write(path, b"\n" + _jsonl(records))


# .lines, .list and .tab say nothing: JSON lines, a JSON list and TSV are told apart by their content
QUERY_FILES = [f"queries{suffix}{gz}" for suffix in (".jsonl", ".json", ".tsv", ".txt", ".parquet", ".lines",
                                                     ".list", ".tab") for gz in ("", ".gz")]


@pytest.mark.parametrize("name", QUERY_FILES)
def test_queries_in_every_format_plain_and_gzip(tmp_path, name):
    path = _query_file(tmp_path / name)
    assert inputs.read_queries(path) == QUERIES
    assert load_queries(str(path)) == synth.read_queries(str(path)) == QUERIES


def test_sniffing_when_the_name_says_nothing(tmp_path):
    assert inputs.record_format(_write(tmp_path / "a", b'\n {"id": 1}\n')) == "jsonl"
    assert inputs.record_format(_write(tmp_path / "b.gz", b' [{"id": 1}]')) == "json"
    assert inputs.record_format(_write(tmp_path / "c", b"1\tx\n")) == "tsv"
    assert inputs.record_format(_parquet(tmp_path / "d", [{"id": 1}])) == "parquet"
    assert inputs.record_format(_write(tmp_path / "e", b"")) == "jsonl"
    assert list(inputs.iter_records(tmp_path / "d")) == [(1, {"id": 1})]


CORPORA = {  # name -> records: BEIR, Pyserini, BRIGHT, and the older field names
    "beir.jsonl": [{"_id": "d1", "title": "Cells", "text": "A cell is ..."},
                   {"_id": "d 2", "title": "", "text": "The sky ...", "metadata": {}}],
    "pyserini.jsonl.gz": [{"id": "d1", "title": "Cells", "contents": "A cell is ..."},
                          {"docid": "d 2", "contents": "The sky ..."}],
    "bright.parquet": [{"id": "d1", "title": "Cells", "content": "A cell is ..."},
                       {"id": "d 2", "title": None, "content": "The sky ..."}],
    "older.json": [{"doc_id": "d1", "title": "Cells", "body": "A cell is ..."},
                   {"doc_id": "d 2", "segment": "The sky ..."}],
}


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_corpus_field_rule_for_rerank_and_synth(tmp_path, name):
    path = tmp_path / name
    if ".parquet" in name:
        _parquet(path, CORPORA[name])
    else:
        _write(path, json.dumps(CORPORA[name]).encode() if ".json" == path.suffix else _jsonl(CORPORA[name]))
    assert inputs.read_corpus(path) == DOCS
    assert load_corpus(str(path), {"d 2"}) == {"d 2": DOCS["d 2"]}
    run = _write(tmp_path / "run.trec", b"q1 Q0 d1 1 2.0 t\nq1 Q0 d 2 2 1.0 t\n")
    queries = _write(tmp_path / "queries.tsv", b"q1\twhat is a cell?\n")
    [job] = synth.jobs_from_run(str(run), str(path), str(queries), "demo", top_k=2)
    assert job.query == "what is a cell?"
    assert job.passages == [{"docid": "d1", "title": "Cells", "text": "A cell is ..."},
                            {"docid": "d 2", "title": "", "text": "The sky ..."}]


def test_one_query_rule_for_rerank_and_synth(tmp_path):
    path = _write(tmp_path / "queries.jsonl", _jsonl([
        {"_id": "1", "id": "x", "query": "the query", "text": "not this"},  # _id before id, query before text
        {"qid": 2, "text": "text only"}, {"query_id": "3", "contents": "contents"}, {"id": "4", "content": "c"},
        {"id": "5", "query": None, "text": "null is absent"}]))
    expected = {"1": "the query", "2": "text only", "3": "contents", "4": "c", "5": "null is absent"}
    assert load_queries(str(path)) == synth.read_queries(str(path)) == inputs.read_queries(path) == expected


def test_tsv_corpus_and_text_map_forms(tmp_path):
    tsv = _write(tmp_path / "collection.tsv.gz", b"d1\tA cell is ...\tCells\nd 2\tThe sky ...\n")
    assert inputs.read_corpus(tsv) == DOCS
    doc_map = _write(tmp_path / "map.json", json.dumps({"d1": {"title": "Cells", "text": "A cell is ..."},
                                                        "d 2": "The sky ..."}).encode())
    assert inputs.read_corpus(doc_map) == DOCS
    query_map = _write(tmp_path / "qmap.json.gz", json.dumps(QUERIES).encode())
    assert inputs.read_queries(query_map) == QUERIES


def test_raw_text_maps_in_any_format(tmp_path):
    for sub in ("id_query", "id_doc"):
        (tmp_path / sub).mkdir()
    _write(tmp_path / "id_query" / "bio.json", json.dumps({"q1": "what?"}).encode())
    _write(tmp_path / "id_query" / "code.tsv.gz", b"q2\thow?\n")
    (tmp_path / "id_query" / "README.md").write_text("not a map")
    _write(tmp_path / "id_doc" / "bio.json", json.dumps({"a": {"title": "T", "text": "x"}, "b": "y"}).encode())
    _parquet(tmp_path / "id_doc" / "code.parquet", [{"_id": "c", "contents": "z"}])
    texts = RawTexts(str(tmp_path))
    assert texts.query({"dataset": "bio", "qid": "q1"}) == "what?"
    assert texts.query({"dataset": "code", "qid": "q2"}) == "how?"
    assert texts.passages({"dataset": "bio", "initial_list": ["a", "b", "c"]}) == [
        {"docid": "a", "title": "T", "text": "x"}, {"docid": "b", "text": "y"}, {"docid": "c", "text": "z"}]


def test_needed_documents_missing_from_the_corpus_are_named(tmp_path):
    path = _write(tmp_path / "c.jsonl", _jsonl([{"_id": "d1", "text": "x"}]))
    with pytest.raises(InputError, match="'d9'") as err:
        load_corpus(str(path), {"d1", "d9"})
    assert err.value.path == str(path)


# ---- errors: file and line, through every reader ----

def _truncated_gz(path, records):
    filler = [dict(r, id=f"x{i}") for i, r in enumerate(records * 1000)]  # BRIGHT ids must be unique
    path.write_bytes(gzip.compress(_jsonl(records + filler))[:-40])
    return path


def _non_utf8(path, records):
    lines = _jsonl(records).splitlines(keepends=True)
    path.write_bytes(b"".join(lines) + b'{"_id": "bad", "text": "caf\xe9"}\n')  # latin-1: line len+1
    return path


def _bad_json(path, records):
    path.write_bytes(_jsonl(records) + b'{"_id": "x", "text": \n')
    return path


BREAKERS = {"truncated gzip": (_truncated_gz, ".jsonl.gz", None), "non-UTF-8": (_non_utf8, ".jsonl", 3),
            "JSON syntax": (_bad_json, ".jsonl", 3)}
TWO_QUERIES = [{"_id": "q1", "text": "a"}, {"_id": "q2", "text": "b"}]


@pytest.mark.parametrize("breaker", sorted(BREAKERS))
@pytest.mark.parametrize("reader", ["rerank queries", "rerank corpus", "synth queries", "synth corpus",
                                    "synth raw", "bright examples"])
def test_broken_files_are_input_errors_naming_file_and_line(tmp_path, breaker, reader):
    make, suffix, line = BREAKERS[breaker]
    raw_rows = make_raw_rows(2)
    records = {"synth raw": raw_rows, "bright examples": [{"id": "q1", "query": "a", "gold_ids": ["d"]},
                                                          {"id": "q2", "query": "b", "gold_ids": []}]}
    path = str(make(tmp_path / f"input{suffix}", records.get(reader, TWO_QUERIES)))
    run = _write(tmp_path / "run.trec", b"q1 Q0 q1 1 1.0 t\n")
    good = _write(tmp_path / "good.jsonl", _jsonl(TWO_QUERIES))
    read = {"rerank queries": lambda: load_queries(path),
            "rerank corpus": lambda: load_corpus(path, {"q1"}),
            "synth queries": lambda: synth.read_queries(path),
            "synth corpus": lambda: list(synth.jobs_from_run(str(run), path, str(good), "x")),
            "synth raw": lambda: list(synth.jobs_from_raw(path, write_raw_dir(str(tmp_path / "raw"), raw_rows))),
            "bright examples": lambda: load_bright_examples(path)}[reader]
    with pytest.raises(InputError) as err:
        read()
    assert err.value.path == path and str(err.value).startswith(path)
    if line is not None:
        assert err.value.line == line and f"{path}:{line}:" in str(err.value)
    else:  # the gzip stream broke somewhere: the message says so
        assert "truncated or corrupt gzip" in str(err.value)


def test_open_text_errors_and_exact_lines(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        inputs.open_text(tmp_path / "absent")
    with pytest.raises(InputError, match="is a directory"):
        inputs.open_text(tmp_path)
    path = _write(tmp_path / "t.txt", b"\xef\xbb\xbfone\n" + b"x" * 20000 + b"\nthree \xff\n")
    lines = []
    with pytest.raises(InputError) as err, inputs.open_text(path) as f:
        for text in f:
            lines.append(text)
    assert lines[0] == "one\n" and len(lines) == 2 and err.value.line == 3 and "0xff" in str(err.value)
    with pytest.raises(InputError) as err, inputs.open_text(path) as f:
        f.read()
    assert err.value.line == 3
    with pytest.raises(InputError, match="tab-separated"):
        list(inputs.iter_records(_write(tmp_path / "x.tsv", b"a\tb\n")))


def test_tsv_line_without_a_tab_is_named(tmp_path):
    path = _write(tmp_path / "q.tsv", b"q1\tok\nq2 no tab\n")
    with pytest.raises(InputError, match="qid<TAB>text") as err:
        load_queries(str(path))
    assert err.value.line == 2


def _one_error_line(capsys, code):
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("command", ["filter", "stats"])
@pytest.mark.parametrize("breaker", ["truncated gzip", "non-UTF-8"])
def test_data_filter_and_stats_on_an_unreadable_raw_file(tmp_path, capsys, command, breaker):
    make, suffix, line = BREAKERS[breaker]
    path = str(make(tmp_path / f"raw{suffix}", make_raw_rows(2)))
    extra = ["--out", str(tmp_path / "kept.jsonl")] if command == "filter" else []
    err = _one_error_line(capsys, main(["data", command, path, *extra]))
    assert path in err and (line is None or f"{path}:{line}:" in err)


def test_data_filter_and_stats_count_a_json_syntax_error_with_its_line_and_strict_stops(tmp_path, capsys):
    path = str(_bad_json(tmp_path / "raw.jsonl", make_raw_rows(2)))
    assert main(["data", "filter", path, "--out", str(tmp_path / "k.jsonl"), "--report", str(tmp_path / "r.json"),
                 "--alpha", "0"]) == 0
    assert [e.split(" ")[0] for e in json.load(open(tmp_path / "r.json"))["errors"]] == [f"{path}:3:"]
    err = _one_error_line(capsys, main(["data", "filter", path, "--out", str(tmp_path / "k2.jsonl"), "--strict"]))
    assert f"{path}:3:" in err and "invalid JSON" in err
    assert main(["data", "stats", path, "--json"]) == 0
    out = capsys.readouterr().out
    assert [e.split(" ")[0] for e in json.loads(out[out.index("{"):])["errors"]] == [f"{path}:3:"]


def test_eval_on_a_truncated_gzip_run(tmp_path, capsys):
    run = tmp_path / "run.trec.gz"
    run.write_bytes(gzip.compress("".join(f"1 Q0 d{i} {i + 1} 0.5 t\n" for i in range(2000)).encode())[:-30])
    qrels = _write(tmp_path / "qrels.txt", b"1 0 a 1\n")
    err = _one_error_line(capsys, main(["eval", str(run), "--qrels", str(qrels)]))
    assert str(run) in err and "truncated or corrupt gzip" in err


def test_truncated_gzip_bright_examples(tmp_path):
    path = tmp_path / "biology.jsonl.gz"
    _truncated_gz(path, [{"id": "1", "query": "q", "gold_ids": ["a"]}])
    with pytest.raises(InputError) as err:
        load_bright_examples(path)
    assert err.value.path == str(path)


# ---- a row whose text is missing from the maps: named with its raw file and line ----

def _row_line(path, qid):
    return next(n for n, text in enumerate(open(path), 1) if f'"qid": "{qid}"' in text)


def test_missing_query_text_is_reported_with_raw_file_and_line(tmp_path, qwen2_tokenizer_dir, capsys):
    rows = make_raw_rows(12, seed=3)
    raw = write_raw_dir(str(tmp_path / "raw"), rows, bad_lines=False, drop_query="q7")
    path = os.path.join(raw, "training_data_all.jsonl")
    where = f"{path}:{_row_line(path, 'q7')}"
    assert main(["data", "filter", path, "--out", str(tmp_path / "k.jsonl"), "--alpha", "0", "--raw-dir", raw,
                 "--tokenizer", qwen2_tokenizer_dir, "--sft-out", str(tmp_path / "sft.json"), "--rl-out",
                 str(tmp_path / "rl.parquet"), "--report", str(tmp_path / "r.json")]) == 0
    [error] = json.load(open(tmp_path / "r.json"))["errors"]
    assert error.startswith(f"{where} [qid]:") and "'q7'" in error
    capsys.readouterr()
    assert main(["data", "stats", path, "--raw-dir", raw, "--tokenizer", qwen2_tokenizer_dir]) == 2
    err = capsys.readouterr().err  # the tokenize progress bar, then the one error line
    assert "Traceback" not in err and f"{where} [qid]:" in err.strip().splitlines()[-1]


# ---- resume logs ----

def test_synth_refuses_an_existing_file_that_is_not_its_log(tmp_path):
    out = tmp_path / "run.trec"
    out.write_text("".join(f"q{i // 100} Q0 d{i} {i % 100 + 1} {1000 - i} bm25\n" for i in range(300)))
    before = out.read_bytes()
    with pytest.raises(InputError) as err:
        synth.completed_keys(str(out))
    assert (err.value.path, err.value.line) == (str(out), 1)
    with pytest.raises(InputError):  # before any request: no client or tokenizer is touched
        synth.synthesize([], None, None, str(out), progress=False)
    assert out.read_bytes() == before
    # a valid log with one foreign line further down, and a foreign file of one line without newline
    out.write_text('{"dataset": "a", "qid": "1"}\n{"dataset": "a"}\n{"dataset": "a", "qid": "3"}\n')
    with pytest.raises(InputError, match="dataset, qid") as err:
        synth.completed_keys(str(out))
    assert err.value.line == 2
    out.write_text("notes without a newline")
    with pytest.raises(InputError):
        synth.completed_keys(str(out))
    assert out.read_text() == "notes without a newline"


def test_synth_log_torn_tail_is_dropped_and_a_valid_log_resumes(tmp_path):
    out = tmp_path / "rows.jsonl"
    out.write_text('{"dataset": "a", "qid": "1"}\n\n{"dataset": "b", "qid": 2}\n{"dataset": "a", "qi')
    assert synth.completed_keys(str(out)) == {("a", "1"), ("b", "2")}
    assert out.read_text() == '{"dataset": "a", "qid": "1"}\n\n{"dataset": "b", "qid": 2}\n'
    assert synth.completed_keys(str(out)) == {("a", "1"), ("b", "2")}  # nothing more to cut
    jobs = [synth.Job("a", "1", "q", []), synth.Job("b", "2", "q", [])]
    stats = synth.synthesize(jobs, None, None, str(out), progress=False)
    assert stats.skipped_done == 2 and stats.written == 0
    assert synth.completed_keys(str(tmp_path / "absent.jsonl")) == set()


def test_read_jsonl_log(tmp_path):
    path = tmp_path / "done.jsonl"
    assert inputs.read_jsonl_log(path, ("qid",)) == ([], 0, False)
    path.write_bytes(b'{"qid": "1"}\n{"qid": "2"}')
    assert inputs.read_jsonl_log(path, ("qid",)) == ([{"qid": "1"}], 13, True)
    inputs.truncate_torn_tail(path, 13)
    assert path.read_bytes() == b'{"qid": "1"}\n'
    path.write_bytes(b'{"qid": "1"}\n{"qid": "caf\xe9"}\n')
    with pytest.raises(InputError) as err:
        inputs.read_jsonl_log(path, ("qid",))
    assert err.value.line == 2
    with pytest.raises(InputError, match="directory"):
        inputs.read_jsonl_log(tmp_path, ("qid",))
