"""TREC run files (``qid Q0 docid rank score tag``) and qrels files (``qid iter docid rel``).

Plain text or gzip (recognised by its magic bytes when reading, by a ``.gz`` suffix when writing).
A docid may contain spaces (the BRIGHT stackoverflow corpus has such ids), so a line with more
fields than the format has is read from both ends: the leading and trailing fields are fixed and
the docid is everything in between, with its original whitespace. Blank lines are skipped.
Malformed lines raise ``InputError`` naming the file and the line number.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import re
from collections.abc import Iterator, Mapping
from typing import NamedTuple

from reasonrank_jax import inputs
from reasonrank_jax.errors import InputError

_FIELDS_RE = re.compile(r"(\s+)")
DEFAULT_TAG = "reasonrank_jax"


class RunEntry(NamedTuple):
    docid: str
    rank: int
    score: float


def open_text(path: str | os.PathLike, mode: str = "r") -> io.TextIOBase | inputs.TextFile:
    """Read (:func:`reasonrank_jax.inputs.open_text`: gzip by magic bytes, errors as InputError) or
    write a UTF-8 text file (gzip when the name ends in ``.gz``)."""
    if mode == "r":
        return inputs.open_text(path)
    if mode == "w":
        path = os.fspath(path)
        if path.endswith(".gz"):
            return gzip.open(path, "wt", encoding="utf-8")
        return open(path, "w", encoding="utf-8")
    raise ValueError(f"mode must be 'r' or 'w', got {mode!r}")


def _split_lines(path: str | os.PathLike, head: int, tail: int, layout: str
                 ) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) with ``head`` fields, then the docid, then ``tail`` fields."""
    want = head + 1 + tail
    with inputs.open_text(path) as lines:
        for number, line in enumerate(lines, start=1):
            stripped = line.strip()
            if not stripped:
                continue
            parts = _FIELDS_RE.split(stripped)  # fields at even indices, separators between
            num_fields = (len(parts) + 1) // 2
            if num_fields < want:
                raise InputError(f"expected {want} fields {layout!r}, got {num_fields}",
                                 path=os.fspath(path), line=number)
            docid = "".join(parts[2 * head: 2 * (num_fields - tail) - 1])
            fields = parts[0: 2 * head: 2] + [docid] + parts[2 * (num_fields - tail)::2]
            yield number, fields


def _number(text: str, kind: type, what: str, path, line: int):
    try:
        value = kind(text)
    except ValueError:
        raise InputError(f"{what} must be {'an integer' if kind is int else 'a number'}, got {text!r}",
                         path=os.fspath(path), line=line) from None
    if kind is float and math.isnan(value):
        raise InputError(f"{what} is NaN", path=os.fspath(path), line=line)
    return value


def read_run_lists(path: str | os.PathLike) -> dict[str, list[RunEntry]]:
    """Each query's entries in rank order (the rank column; file order among equal ranks)."""
    lists: dict[str, list[RunEntry]] = {}
    seen: dict[str, set[str]] = {}
    for number, (qid, _q0, docid, rank, score, _tag) in _split_lines(
            path, head=2, tail=3, layout="qid Q0 docid rank score tag"):
        entry = RunEntry(docid, _number(rank, int, "rank", path, number),
                         _number(score, float, "score", path, number))
        if docid in seen.setdefault(qid, set()):
            raise InputError(f"docid {docid!r} appears twice for query {qid!r}",
                             path=os.fspath(path), line=number)
        seen[qid].add(docid)
        lists.setdefault(qid, []).append(entry)
    return {qid: sorted(entries, key=lambda e: e.rank) for qid, entries in lists.items()}


def read_run(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """``{qid: {docid: score}}``, the form that the metrics take."""
    return {qid: {e.docid: e.score for e in entries} for qid, entries in read_run_lists(path).items()}


def read_qrels(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """``{qid: {docid: relevance}}`` from ``qid iter docid rel`` lines."""
    qrels: dict[str, dict[str, int]] = {}
    for number, (qid, _iter, docid, rel) in _split_lines(path, head=2, tail=1, layout="qid iter docid rel"):
        judged = qrels.setdefault(qid, {})
        if docid in judged:
            raise InputError(f"docid {docid!r} judged twice for query {qid!r}",
                             path=os.fspath(path), line=number)
        judged[docid] = _number(rel, int, "relevance", path, number)
    return qrels


def _check_token(value: str, what: str, allow_spaces: bool = False) -> None:
    bad = (not value or value != value.strip() or any(c in value for c in "\r\n\t\v\f")
           or (not allow_spaces and " " in value))
    if bad:
        raise ValueError(f"{what} {value!r} cannot be written to a TREC file")


def write_run(path: str | os.PathLike, run: Mapping[str, Mapping[str, float]], tag: str = DEFAULT_TAG
              ) -> None:
    """Write ranks 1..n per query, by score descending (ties by docid descending, as trec_eval ranks)."""
    _check_token(tag, "tag")
    with open_text(path, "w") as out:
        for qid, scores in run.items():
            _check_token(qid, "qid")
            ranked = sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
            for rank, (docid, score) in enumerate(ranked, start=1):
                _check_token(docid, "docid", allow_spaces=True)
                out.write(f"{qid} Q0 {docid} {rank} {float(score)!r} {tag}\n")


def write_qrels(path: str | os.PathLike, qrels: Mapping[str, Mapping[str, int]]) -> None:
    """Write ``qid 0 docid rel`` lines."""
    with open_text(path, "w") as out:
        for qid, judged in qrels.items():
            _check_token(qid, "qid")
            for docid, rel in judged.items():
                _check_token(docid, "docid", allow_spaces=True)
                out.write(f"{qid} 0 {docid} {int(rel)}\n")
