"""Reading input files: queries, corpora, text maps, record files and resume logs, with one field rule.

Every reader here raises :class:`~reasonrank_jax.errors.InputError` naming the file (and the line
where there is one) for anything it cannot read: a missing file, a directory, bytes that are not
UTF-8, a truncated or corrupt gzip stream, a JSON syntax error, a record without the fields below.

Formats. Any file may be gzip-compressed (recognised by its magic bytes, whatever its name). The
format comes from the name with a trailing ``.gz`` removed:

* ``.jsonl``: one JSON object a line; blank lines are skipped.
* ``.json``: one JSON document, either a list of objects or an object ``{id: text}`` /
  ``{id: {field: value, ...}}`` (the key is the id; the form of the RAW_DIR ``id_query/`` and
  ``id_doc/`` maps). Errors name the element's 1-based position in the list or object as its line.
* ``.tsv``, ``.txt``: tab-separated, no header; queries ``qid<TAB>text``, corpora
  ``docid<TAB>text[<TAB>title]``. A line needs at least two fields; the last column takes the rest
  of the line, tabs included. Blank lines are skipped.
* ``.parquet``: one record a row (the line number is the row number).
* any other name: by content: parquet magic bytes, else the first non-blank character ``{`` means
  JSON lines, ``[`` a JSON list, anything else tab-separated.

Field rule (rerank, data and eval all read records through it). A field is present when the key
exists and its value is not null. The first present field of each list is used:

* query id: ``_id``, ``id``, ``qid``, ``query_id``
* query text: ``query``, ``text``, ``contents``, ``content``
* document id: ``_id``, ``id``, ``docid``, ``doc_id``
* document text: ``text``, ``contents``, ``content``, then the older names ``body``, ``passage``,
  ``segment``; plus ``title`` when present (``""`` otherwise; a title is never required).

Ids are strings or integers (kept as strings); texts and titles are strings.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import os
import zlib
from collections.abc import Collection, Iterator, Sequence
from typing import BinaryIO

from reasonrank_jax.errors import InputError

QUERY_ID_FIELDS = ("_id", "id", "qid", "query_id")
QUERY_TEXT_FIELDS = ("query", "text", "contents", "content")
DOC_ID_FIELDS = ("_id", "id", "docid", "doc_id")
DOC_TEXT_FIELDS = ("text", "contents", "content", "body", "passage", "segment")
TITLE_FIELD = "title"
QUERY_TSV_COLUMNS = ("qid", "text")
CORPUS_TSV_COLUMNS = ("docid", "text", "title")
RECORD_SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".tsv": "tsv", ".txt": "tsv", ".parquet": "parquet"}

_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"
# What reading a damaged file raises: a truncated gzip stream (EOFError), a corrupt one
# (gzip.BadGzipFile, an OSError, or zlib.error), a failing disk (OSError).
_READ_ERRORS = (EOFError, zlib.error, OSError)


# ---- text files ----

def _open_raw(path: str) -> BinaryIO:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise InputError("file not found", path=path) from None
    except IsADirectoryError:
        raise InputError("is a directory, not a file", path=path) from None
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror}", path=path) from None


class TextFile:
    """A UTF-8 text file, plain or gzip, as lines (iteration) or one string (``read``).

    Lines are decoded one at a time, so a byte that is not UTF-8 is reported at its own line;
    ``line`` is the number of the last line read. A UTF-8 byte order mark is dropped.
    """

    def __init__(self, path: str):
        self.path, self.line = path, 0
        self._raw = _open_raw(path)
        self.compressed = self._raw.peek(2)[:2] == _GZIP_MAGIC
        if self.compressed:
            self._raw.close()
            self._raw = gzip.open(path, "rb")

    def __enter__(self) -> TextFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._raw.close()

    def raw_lines(self) -> Iterator[bytes]:
        """The undecoded lines, with their line endings."""
        try:
            for raw in self._raw:
                self.line += 1
                yield raw.removeprefix(codecs.BOM_UTF8) if self.line == 1 else raw
        except _READ_ERRORS as err:
            raise self._damaged(err, self.line + 1) from None

    def __iter__(self) -> Iterator[str]:
        for raw in self.raw_lines():
            yield self._decode(raw, self.line)

    def read_bytes(self) -> bytes:
        """The whole (decompressed) content."""
        try:
            return self._raw.read()
        except _READ_ERRORS as err:
            raise self._damaged(err, None) from None

    def read(self) -> str:
        return self._decode(self.read_bytes().removeprefix(codecs.BOM_UTF8), 1)

    def _decode(self, data: bytes, first_line: int) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = first_line + data.count(b"\n", 0, err.start)
            raise InputError(f"not UTF-8 text (byte {data[err.start]:#04x})", path=self.path, line=line) from None

    def _damaged(self, err: Exception, line: int | None) -> InputError:
        what = "truncated or corrupt gzip file" if self.compressed else "cannot read"
        return InputError(f"{what} ({type(err).__name__}: {err})", path=self.path, line=line)


def open_text(path: str | os.PathLike) -> TextFile:
    """Open a UTF-8 text file for reading, gzip or not; every read error is an InputError."""
    return TextFile(os.fspath(path))


# ---- records ----

def _split_name(name: str) -> tuple[str, str] | None:
    """(stem, format) of a file name with a record suffix (after removing ``.gz``), else None."""
    base = name[:-3] if name.lower().endswith(".gz") else name
    for suffix, fmt in RECORD_SUFFIXES.items():
        if base.lower().endswith(suffix):
            return base[: -len(suffix)], fmt
    return None


def record_file_stem(name: str) -> str | None:
    """``biology.jsonl.gz`` -> ``biology``; None for a name without a record suffix."""
    split = _split_name(name)
    return split[0] if split else None


def record_format(path: str | os.PathLike) -> str:
    """'jsonl', 'json', 'tsv' or 'parquet': from the name (``.gz`` removed), else from the content."""
    path = os.fspath(path)
    split = _split_name(os.path.basename(path))
    if split:
        return split[1]
    with open_text(path) as f:
        for raw in f.raw_lines():
            if f.line == 1 and raw.startswith(_PARQUET_MAGIC):
                return "parquet"
            if raw.strip():
                return {b"{": "jsonl", b"[": "json"}.get(raw.lstrip()[:1], "tsv")
    return "jsonl"  # empty: no records in any format


def parse_json_object(text: str, path: str, line: int | None) -> dict:
    """One JSON object, or an InputError naming the file and line."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"invalid JSON: {err.msg} (column {err.colno})", path=path, line=line) from None
    if not isinstance(value, dict):
        raise InputError(f"expected a JSON object, got {type(value).__name__}", path=path, line=line)
    return value


def iter_records(path: str | os.PathLike, tsv_columns: Sequence[str] | None = None
                 ) -> Iterator[tuple[int, dict]]:
    """(line number, record) for every record of a JSONL, JSON, TSV or parquet file (see the module doc).

    ``tsv_columns`` names the fields of a tab-separated line; without it a TSV file is an error.
    """
    path = os.fspath(path)
    fmt = record_format(path)
    if fmt == "parquet":
        yield from _parquet_records(path)
    elif fmt == "json":
        yield from _json_records(path)
    elif fmt == "tsv":
        yield from _tsv_records(path, tsv_columns)
    else:
        with open_text(path) as f:
            for text in f:
                if text.strip():
                    yield f.line, parse_json_object(text, path, f.line)


def _json_records(path: str) -> Iterator[tuple[int, dict]]:
    with open_text(path) as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"invalid JSON: {err.msg} (column {err.colno})", path=path, line=err.lineno) from None
    if isinstance(data, dict):  # an id -> text (or id -> record) map: the key is the id
        data = [{**value, "_id": key} if isinstance(value, dict) else {"_id": key, "text": value}
                for key, value in data.items()]
    if not isinstance(data, list):
        raise InputError(f"expected a JSON list of objects or an object {{id: text}}, got {type(data).__name__}",
                         path=path)
    for number, record in enumerate(data, start=1):
        if not isinstance(record, dict):
            raise InputError(f"expected a JSON object, got {type(record).__name__}", path=path, line=number)
        yield number, record


def _tsv_records(path: str, columns: Sequence[str] | None) -> Iterator[tuple[int, dict]]:
    if not columns:
        raise InputError("tab-separated text, but this input must be JSON lines, a JSON list or parquet",
                         path=path)
    with open_text(path) as f:
        for text in f:
            if not text.strip():
                continue
            fields = text.rstrip("\r\n").split("\t", len(columns) - 1)
            if len(fields) < 2:
                raise InputError(f"expected tab-separated {'<TAB>'.join(columns)}", path=path, line=f.line)
            yield f.line, dict(zip(columns, fields))


def _parquet_records(path: str) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq  # only parquet input needs it

    with open_text(path) as f:
        # parquet reads its footer first, which a gzip stream cannot seek to: decompress into memory
        source = io.BytesIO(f.read_bytes()) if f.compressed else path
    rows = 0
    try:
        for batch in pq.ParquetFile(source).iter_batches():
            for row in batch.to_pylist():
                rows += 1
                yield rows, row
    except (ValueError, *_READ_ERRORS) as err:  # pyarrow's ArrowInvalid is a ValueError
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"cannot read parquet: {message}", path=path) from None


# ---- the field rule ----

def _first_present(record: dict, fields: Sequence[str]) -> str | None:
    return next((field for field in fields if record.get(field) is not None), None)


def record_id(record: dict, fields: Sequence[str], path: str, line: int | None, what: str = "id") -> str:
    """The record's id: the first present of ``fields``, a string or an integer."""
    field = _first_present(record, fields)
    if field is None:
        raise InputError(f"no {what} (one of {', '.join(fields)})", path=path, line=line, field=fields[0])
    value = record[field]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
        raise InputError(f"expected a non-empty string or integer {what}, got {value!r:.60}",
                         path=path, line=line, field=field)
    return str(value)


def record_text(record: dict, fields: Sequence[str], path: str, line: int | None, what: str = "text") -> str:
    """The record's text: the first present of ``fields``, a string."""
    field = _first_present(record, fields)
    if field is None:
        raise InputError(f"no {what} (one of {', '.join(fields)})", path=path, line=line, field=fields[0])
    if not isinstance(record[field], str):
        raise InputError(f"expected a string, got {type(record[field]).__name__}", path=path, line=line, field=field)
    return record[field]


def document_fields(record: dict, path: str, line: int | None) -> dict[str, str]:
    """``{"title": ..., "text": ...}`` of a document record (title ``""`` when absent)."""
    title = record.get(TITLE_FIELD)
    if title is not None and not isinstance(title, str):
        raise InputError(f"expected a string, got {type(title).__name__}", path=path, line=line, field=TITLE_FIELD)
    return {"title": title or "", "text": record_text(record, DOC_TEXT_FIELDS, path, line, "document text")}


def read_queries(path: str | os.PathLike) -> dict[str, str]:
    """qid -> query text from a queries file in any format (TSV: ``qid<TAB>text``)."""
    path = os.fspath(path)
    return {record_id(record, QUERY_ID_FIELDS, path, line, "query id"):
            record_text(record, QUERY_TEXT_FIELDS, path, line, "query text")
            for line, record in iter_records(path, QUERY_TSV_COLUMNS)}


def read_corpus(path: str | os.PathLike, needed: Collection[str] | None = None) -> dict[str, dict[str, str]]:
    """docid -> ``{"title", "text"}`` from a corpus in any format (TSV: ``docid<TAB>text[<TAB>title]``).

    With ``needed``, only those documents are kept (corpora are large) and each must be there.
    """
    path = os.fspath(path)
    corpus = {}
    for line, record in iter_records(path, CORPUS_TSV_COLUMNS):
        docid = record_id(record, DOC_ID_FIELDS, path, line, "document id")
        if needed is None or docid in needed:
            corpus[docid] = document_fields(record, path, line)
    missing = set(needed or ()) - corpus.keys()
    if missing:
        raise InputError(f"{len(missing)} of the {len(needed)} documents needed are not in the corpus, "
                         f"e.g. {min(missing)!r}", path=path)
    return corpus


# ---- resume logs ----

def read_jsonl_log(path: str | os.PathLike, required_keys: Sequence[str]) -> tuple[list[dict], int, bool]:
    """(records, good_bytes, torn) of an append-only JSONL log that a restart resumes from.

    Every complete (newline-terminated) line must be a JSON object with ``required_keys``: anything
    else means the file is not this log, and it is refused (InputError at that line) rather than
    appended to or cut. Only a last line without its newline, a write torn by a kill, is left out
    of ``records`` and ``good_bytes`` (the size of the complete lines); blank lines are skipped.
    A missing file is an empty log.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        return [], 0, False
    records, good_bytes = [], 0
    with _open_raw(path) as f:
        for number, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                if not raw.lstrip().startswith(b"{"):  # a torn record starts like one
                    raise _not_a_log(path, number, required_keys)
                return records, good_bytes, True
            good_bytes += len(raw)
            if not raw.strip():
                continue
            try:
                record = parse_json_object(raw.decode("utf-8"), path, number)
            except (UnicodeDecodeError, InputError):
                raise _not_a_log(path, number, required_keys) from None
            if not all(key in record for key in required_keys):
                raise _not_a_log(path, number, required_keys)
            records.append(record)
    return records, good_bytes, False


def _not_a_log(path: str, line: int, required_keys: Sequence[str]) -> InputError:
    return InputError(f"not a line of this command's log (a JSON object with {', '.join(required_keys)}); "
                      "the file is left as it is: choose another output file", path=path, line=line)


def truncate_torn_tail(path: str | os.PathLike, good_bytes: int) -> None:
    """Cut a log back to its complete lines (``good_bytes`` from :func:`read_jsonl_log`)."""
    if os.path.getsize(path) > good_bytes:
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
