"""BRIGHT examples: queries, gold documents (the qrels) and excluded documents.

One example a line (``.jsonl``, ``.jsonl.gz``) or a row (``.parquet``), read by
:func:`reasonrank_jax.inputs.iter_records`, with the fields of the Hugging Face ``xlangai/BRIGHT``
"examples" configuration: ``id``, ``query``, ``reasoning``, ``excluded_ids`` (``["N/A"]`` when
none), ``gold_ids``, ``gold_ids_long``, ``gold_answer``.
Qrels are each example's ``gold_ids`` at relevance 1 (SPEC section 3).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from reasonrank_jax.errors import InputError
from reasonrank_jax.inputs import iter_records

DATASETS = ("biology", "earth_science", "economics", "psychology", "robotics", "stackoverflow",
            "sustainable_living", "leetcode", "pony", "aops", "theoremqa_questions", "theoremqa_theorems")
EXAMPLE_SUFFIXES = (".jsonl.gz", ".jsonl", ".parquet")
RUN_SUFFIXES = (".trec.gz", ".trec", ".txt.gz", ".txt")
NO_EXCLUSION = "N/A"


class BrightExamples(NamedTuple):
    examples: list[dict]                # the records, with ``id`` as a string
    qrels: dict[str, dict[str, int]]    # qid -> {gold docid: 1}
    excluded: dict[str, set[str]]       # qid -> excluded docids (empty set for "N/A")


def load_bright_examples(path: str | os.PathLike) -> BrightExamples:
    """Read and check a BRIGHT examples file; errors name the file, the line (or row) and the field."""
    path = os.fspath(path)
    examples, qrels, excluded = [], {}, {}
    for line, record in iter_records(path):
        example = _check_example(record, path, line)
        qid = example["id"]
        if qid in qrels:
            raise InputError(f"duplicate id {qid!r}", path=path, line=line, field="id")
        examples.append(example)
        qrels[qid] = {docid: 1 for docid in example["gold_ids"]}
        excluded[qid] = {docid for docid in example["excluded_ids"] if docid != NO_EXCLUSION}
    return BrightExamples(examples, qrels, excluded)


def _check_example(record: dict, path: str, line: int) -> dict:
    for field in ("id", "query", "gold_ids"):
        if record.get(field) is None:
            raise InputError("missing field", path=path, line=line, field=field)
    qid = record["id"]
    if isinstance(qid, bool) or not isinstance(qid, (str, int)) or str(qid).strip() != str(qid) or not str(qid):
        raise InputError(f"expected a non-empty string without surrounding spaces, got {qid!r}",
                         path=path, line=line, field="id")
    if not isinstance(record["query"], str):
        raise InputError(f"expected a string, got {type(record['query']).__name__}",
                         path=path, line=line, field="query")
    example = dict(record, id=str(qid))
    for field in ("gold_ids", "excluded_ids"):
        ids = record.get(field)
        if ids is None and field == "excluded_ids":
            ids = []
        if not isinstance(ids, list) or not all(isinstance(docid, str) and docid for docid in ids):
            raise InputError(f"expected a list of docid strings, got {ids!r:.80}",
                             path=path, line=line, field=field)
        example[field] = ids
    return example


def find_examples_file(directory: str | os.PathLike, dataset: str) -> Path:
    """``{directory}/{dataset}.jsonl.gz`` (or ``.jsonl``, ``.parquet``), also under ``examples/``."""
    return _find(Path(directory), ("", "examples"), dataset, EXAMPLE_SUFFIXES, "BRIGHT examples")


def find_run_file(directory: str | os.PathLike, dataset: str, retriever: str = "reasonir") -> Path:
    """``{directory}/runs/{retriever}/{dataset}.trec.gz`` (or ``.trec``), also directly in ``directory``."""
    return _find(Path(directory), (os.path.join("runs", retriever), ""), dataset, RUN_SUFFIXES, "run")


def bright_paths(bright_dir: str | os.PathLike, dataset: str, retriever: str = "reasonir"
                 ) -> tuple[Path, Path]:
    """(examples file, first-stage run file) of one dataset in a BRIGHT data directory."""
    return find_examples_file(bright_dir, dataset), find_run_file(bright_dir, dataset, retriever)


def _find(directory: Path, subdirs: tuple[str, ...], dataset: str, suffixes: tuple[str, ...], what: str
          ) -> Path:
    candidates = [directory / sub / f"{dataset}{suffix}" for sub in subdirs for suffix in suffixes]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise InputError(f"no {what} file for dataset {dataset!r} (looked for {candidates[0].name} "
                     f"and similar names)", path=str(directory))


def dataset_name(run_path: str | os.PathLike) -> str:
    """The dataset a run file belongs to, from its name: ``runs/biology.trec.gz`` -> ``biology``."""
    name = Path(run_path).name
    for suffix in (".gz", ".trec", ".txt", ".run", ".tsv"):
        name = name.removesuffix(suffix)
    return name
