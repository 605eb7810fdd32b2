"""Reading the ReasonRank raw set and its text maps, with every input row accounted for.

Accepted raw layout (``RAW_DIR``)::

    RAW_DIR/
      training_data_all.jsonl     one row a line: dataset, qid, initial_list, final_list,
                                  reasoning, relevant_docids (lists of passage ids)
      id_query/                   query texts, one file per dataset (the file stem is the dataset)
        {dataset}.json            {"qid": "text", ...}
        {dataset}.jsonl           or any queries file of reasonrank_jax.inputs (.jsonl, .tsv, .parquet)
      id_doc/                     passage texts, the same forms
        {dataset}.json            {"docid": "text" | {"title": .., "text": ..}, ...}
        {dataset}.jsonl           or any corpus file of reasonrank_jax.inputs

The files are read by :func:`reasonrank_jax.inputs.read_queries` and ``read_corpus``, so their
fields follow the one field rule documented there. A text is looked up in the map of the row's
dataset first, then in the other files (so one ``id_query/all.json`` also works). Bad rows do not
abort a build: they are collected in a :class:`Report` with file and line, and the build fails only
when asked to (``strict``). A file that cannot be read at all (not UTF-8, a truncated gzip) does.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from typing import Any, Callable, Iterator

from reasonrank_jax.errors import InputError
from reasonrank_jax.inputs import open_text, parse_json_object, read_corpus, read_queries, record_file_stem

RAW_FIELDS = ("dataset", "qid", "initial_list", "final_list", "reasoning", "relevant_docids")
_LIST_FIELDS = ("initial_list", "final_list", "relevant_docids")


@dataclasses.dataclass
class Report:
    """Where every input row went: kept or dropped (per domain, with the reason) or bad (with where)."""

    kept: Counter = dataclasses.field(default_factory=Counter)
    dropped: dict[str, Counter] = dataclasses.field(default_factory=dict)  # reason -> domain -> count
    errors: list[str] = dataclasses.field(default_factory=list)  # one InputError message per bad row
    total: int = 0

    def keep(self, domain: str) -> None:
        self.kept[domain] += 1

    def drop(self, domain: str, reason: str) -> None:
        self.dropped.setdefault(reason, Counter())[domain] += 1

    def bad(self, err: InputError) -> None:
        self.errors.append(str(err))

    @property
    def num_kept(self) -> int:
        return sum(self.kept.values())

    @property
    def num_dropped(self) -> int:
        return sum(sum(c.values()) for c in self.dropped.values())

    def accounted(self) -> bool:
        return self.num_kept + self.num_dropped + len(self.errors) == self.total

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "kept": self.num_kept, "dropped": self.num_dropped,
                "bad": len(self.errors), "kept_per_domain": dict(sorted(self.kept.items())),
                "dropped_per_reason": {r: dict(sorted(c.items())) for r, c in sorted(self.dropped.items())},
                "errors": list(self.errors)}

    def summary(self) -> str:
        domains = sorted(set(self.kept) | {d for c in self.dropped.values() for d in c})
        lines = [f"{self.total} rows: {self.num_kept} kept, {self.num_dropped} dropped, {len(self.errors)} bad"]
        for d in domains:
            drops = ", ".join(f"{r} {c[d]}" for r, c in sorted(self.dropped.items()) if c.get(d))
            lines.append(f"  {d}: kept {self.kept.get(d, 0)}" + (f"; dropped: {drops}" if drops else ""))
        lines += [f"  bad: {e}" for e in self.errors[:20]]
        if len(self.errors) > 20:
            lines.append(f"  ... and {len(self.errors) - 20} more bad rows")
        return "\n".join(lines)


def iter_jsonl(path: str) -> Iterator[tuple[int, dict | InputError]]:
    """Yield (line number, JSON object or the InputError describing the bad line); blank lines skipped.

    A bad line is yielded, not raised, so that a build can count it and go on; a file that cannot
    be read (missing, not UTF-8, a truncated gzip) raises.
    """
    with open_text(path) as lines:
        for text in lines:
            if text.strip():
                try:
                    yield lines.line, parse_json_object(text, path, lines.line)
                except InputError as err:
                    yield lines.line, err


class RawRow(dict):
    """A validated raw row that remembers its file and line, so that an error found later (a text
    missing from the maps) names them wherever it is raised."""

    def __init__(self, row: dict, path: str, line: int):
        super().__init__(row)
        self.path, self.line = path, line


def validate_raw_row(obj: Any, path: str, line: int) -> RawRow:
    """Check one raw row's schema; ids become strings. Raises InputError naming the field."""
    if not isinstance(obj, dict):
        raise InputError("expected a JSON object", path=path, line=line)
    missing = [k for k in RAW_FIELDS if k not in obj]
    if missing:
        raise InputError(f"missing field(s) {', '.join(missing)}", path=path, line=line)
    row = dict(obj)
    for key in ("dataset", "qid"):
        if not isinstance(row[key], (str, int)) or isinstance(row[key], bool) or str(row[key]) == "":
            raise InputError("expected a non-empty string", path=path, line=line, field=key)
        row[key] = str(row[key])
    if not isinstance(row["reasoning"], str):
        raise InputError("expected a string", path=path, line=line, field="reasoning")
    for key in _LIST_FIELDS:
        value = row[key]
        if not isinstance(value, list) or not all(isinstance(x, (str, int)) and not isinstance(x, bool)
                                                  for x in value):
            raise InputError("expected a list of passage ids", path=path, line=line, field=key)
        row[key] = [str(x) for x in value]
    if not row["initial_list"]:
        raise InputError("empty candidate list", path=path, line=line, field="initial_list")
    if len(set(row["initial_list"])) != len(row["initial_list"]):
        raise InputError("duplicate passage ids", path=path, line=line, field="initial_list")
    outside = [d for d in row["final_list"] if d not in set(row["initial_list"])]
    if outside:
        raise InputError(f"ids not in initial_list: {outside[:3]}", path=path, line=line, field="final_list")
    return RawRow(row, path, line)


def read_raw_rows(path: str, report: Report | None = None, strict: bool = False
                  ) -> Iterator[tuple[int, RawRow]]:
    """Yield (line, validated raw row). Bad rows go to ``report`` (or raise when ``strict``)."""
    for lineno, obj in iter_jsonl(path):
        if report is not None:
            report.total += 1
        try:
            if isinstance(obj, InputError):
                raise obj
            yield lineno, validate_raw_row(obj, path, lineno)
        except InputError as err:
            if strict or report is None:
                raise
            report.bad(err)


class TextMap:
    """id -> text maps from a directory of per-dataset record files (see the module docstring)."""

    def __init__(self, directory: str, read: Callable[[str], dict[str, Any]]):
        if not os.path.isdir(directory):
            raise InputError("text map directory not found", path=directory)
        self.directory = directory
        self.by_dataset: dict[str, dict[str, Any]] = {}
        for name in sorted(os.listdir(directory)):
            dataset = record_file_stem(name)
            if dataset is not None:
                self.by_dataset.setdefault(dataset, {}).update(read(os.path.join(directory, name)))

    def lookup(self, dataset: str, item_id: str) -> Any | None:
        own = self.by_dataset.get(dataset)
        if own is not None and item_id in own:
            return own[item_id]
        for name, table in self.by_dataset.items():
            if name != dataset and item_id in table:
                return table[item_id]
        return None


class RawTexts:
    """The raw set's text maps: ``id_query/`` and ``id_doc/`` under one directory.

    Errors about a row name ``path`` and ``line`` when given, else the row's own (a :class:`RawRow`).
    """

    def __init__(self, raw_dir: str):
        self.queries = TextMap(os.path.join(raw_dir, "id_query"), read_queries)
        self.docs = TextMap(os.path.join(raw_dir, "id_doc"), read_corpus)

    def query(self, row: dict, path: str = "", line: int | None = None) -> str:
        text = self.queries.lookup(row["dataset"], row["qid"])
        if text is None:
            raise InputError(f"query {row['qid']!r} of dataset {row['dataset']!r} not found in "
                             f"{self.queries.directory}", **_where(row, path, line), field="qid")
        return text

    def passages(self, row: dict, path: str = "", line: int | None = None) -> list[dict]:
        """The prompt builder's passages: docid, text and (when not empty) title."""
        out = []
        for docid in row["initial_list"]:
            doc = self.docs.lookup(row["dataset"], docid)
            if doc is None:
                raise InputError(f"passage {docid!r} of dataset {row['dataset']!r} not found in "
                                 f"{self.docs.directory}", **_where(row, path, line), field="initial_list")
            out.append({"docid": docid, **({"title": doc["title"]} if doc["title"] else {}), "text": doc["text"]})
        return out


def _where(row: dict, path: str, line: int | None) -> dict:
    return {"path": path or getattr(row, "path", None),
            "line": line if line is not None else getattr(row, "line", None)}
