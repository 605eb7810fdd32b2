"""TFDS builders writing array_record files from a local manual directory, without TensorFlow.

``tensorflow_datasets`` 4.9.10 builds and reads array_record datasets with TensorFlow absent:
examples are serialized with protobuf only and read back through ``ArrayRecordDataSource``
(random access: ``len(ds)``, ``ds[i]``). The info is built directly with ``DatasetInfo`` (the
``dataset_info_from_configs`` path reads package metadata files we do not ship) and with
``disable_shuffling=True``, so index i is the i-th generated example and the length side file
``lengths-{split}.npy`` lines up with it.

Builders (manual directory layouts in the README / :mod:`reasonrank_jax.data.records`):
- ``reasonrank_raw``: training_data_all.jsonl + id_query/ + id_doc/; self-consistency filter applied.
- ``reasonrank_sft``: an Alpaca JSON file (system, instruction, output).
- ``reasonrank_rl``: a parquet file (prompt, label, initial_list, final_list, relevant_docids, dataset).
- ``bright``: examples/{dataset}.jsonl[.gz], optional documents/{dataset}.{jsonl[.gz],parquet} and
  runs/{retriever}/{dataset}.trec[.gz]; one split per dataset.
Configs: ``text`` (source fields) or ``tokenized`` (plus token ids; needs ``tokenizer_dir``).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import tempfile

import numpy as np
import tensorflow_datasets as tfds

from reasonrank_jax.data import stream
from reasonrank_jax.data.filter import DEFAULT_ALPHA, self_consistency_scores, split_of
from reasonrank_jax.data.records import RawTexts, Report, open_text, read_raw_rows
from reasonrank_jax.errors import InputError

_TEXT_CONFIGS = [tfds.core.BuilderConfig(name="text", description="source fields"),
                 tfds.core.BuilderConfig(name="tokenized", description="source fields + token ids")]
_Text, _Str = tfds.features.Text, tfds.features.Sequence(tfds.features.Text())
_Ids = tfds.features.Tensor(shape=(None,), dtype=np.int32)


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """Everything a build depends on besides the manual directory."""

    alpha: float = DEFAULT_ALPHA           # raw: self-consistency threshold
    validation_fraction: float = 0.05      # share of (dataset, qid) hashes in 'validation'
    tokenizer_dir: str | None = None       # set -> config 'tokenized'
    max_length: int = 23552                # SFT: prompt + response tokens (SPEC 5)
    overflow: str = "truncate"             # SFT: 'truncate' or 'drop' over-length examples
    max_prompt_length: int = 20480         # RL: longer prompts are dropped (SPEC 5)
    mode: str = "rank_GPT_reasoning"       # raw: prompt mode (for the tokenized raw config)
    max_passage_length: int = 512
    strict: bool = False                   # stop at the first bad row instead of reporting it
    sft_file: str | None = None            # SFT: file name inside the manual dir (default: the only *.json)
    rl_file: str | None = None             # RL: file name inside the manual dir (default: the only *.parquet)
    raw_file: str = "training_data_all.jsonl"
    retriever: str | None = None           # BRIGHT: runs/{retriever}/ (default: the only one)
    top_k: int = 100                       # BRIGHT: candidates kept per query
    overwrite: bool = False                # replace an existing build of the same dataset, config and version


def _config_name(options: BuildOptions) -> str:
    return "tokenized" if options.tokenizer_dir else "text"


class _ManualBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = _TEXT_CONFIGS
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the local source directory as manual_dir (see reasonrank_jax.data)."

    def __init__(self, *, options: BuildOptions | None = None, **kwargs):
        self.options = options or BuildOptions()
        if "config" not in kwargs:
            kwargs["config"] = _config_name(self.options)
        self.report = Report()
        self.lengths: dict[str, list[int]] = {}
        self.token_counts: dict[str, int] = {}
        self._tokenizer = None
        super().__init__(**kwargs)

    @classmethod
    def relative_dir(cls, options: BuildOptions) -> str:
        """<name>/<config>/<version>: where TFDS puts this build under a data dir."""
        return os.path.join(cls.name, _config_name(options), str(cls.VERSION))

    @classmethod
    def check_manual_dir(cls, manual: str, options: BuildOptions) -> None:
        """Raise InputError naming `manual` and the expected layout unless it holds this builder's inputs (checked
        before TFDS, whose own check of an empty manual dir is an AssertionError)."""
        raise NotImplementedError

    @property
    def tokenized(self) -> bool:
        return self.builder_config.name == "tokenized"

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if not self.options.tokenizer_dir:
                raise InputError("the tokenized config needs a tokenizer directory", field="tokenizer")
            from reasonrank_jax.text import load_tokenizer
            self._tokenizer = load_tokenizer(self.options.tokenizer_dir)
        return self._tokenizer

    def _features(self) -> dict:
        raise NotImplementedError

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(self._features()),
                                     disable_shuffling=True)

    def _count(self, status: str) -> None:
        self.token_counts[status] = self.token_counts.get(status, 0) + 1

    def _by_split(self, items, key_of) -> dict[str, list]:
        """Items grouped by the hash split of key_of(item) = (dataset, qid); empty splits left out."""
        out: dict[str, list] = {}
        for item in items:
            out.setdefault(split_of(*key_of(item), self.options.validation_fraction), []).append(item)
        return out


class ReasonrankRaw(_ManualBuilder):
    """The raw set, filtered (alpha), with query and passage texts joined in."""

    def _features(self):
        features = {"dataset": _Text(), "qid": _Text(), "initial_list": _Str, "final_list": _Str,
                    "reasoning": _Text(), "relevant_docids": _Str, "query": _Text(), "passages": _Str,
                    "ndcg_at_10": np.float32, "source_line": np.int32}
        if self.tokenized:
            features["prompt_ids"] = _Ids
        return features

    @classmethod
    def check_manual_dir(cls, manual, options):
        raw_file = options.raw_file
        missing = [name for name, exists in ((raw_file, os.path.isfile), ("id_query/", os.path.isdir),
                                             ("id_doc/", os.path.isdir)) if not exists(os.path.join(manual, name))]
        if missing:
            raise InputError(f"missing {', '.join(missing)} (a raw manual directory holds {raw_file}, id_query/ "
                             "and id_doc/)", path=manual)

    def _split_generators(self, dl_manager):
        manual = str(dl_manager.manual_dir)
        path = os.path.join(manual, self.options.raw_file)
        self._texts = RawTexts(manual)
        rows = list(read_raw_rows(path, self.report, self.options.strict))
        kept = []
        for (line, row), score in zip(rows, self_consistency_scores(r for _, r in rows)):
            if score < self.options.alpha:
                self.report.drop(row["dataset"], f"ndcg@10<{self.options.alpha:g}")
                continue
            try:  # texts are looked up again when the example is written; this only checks them
                self._texts.query(row, path, line), self._texts.passages(row, path, line)
            except InputError as err:
                if self.options.strict:
                    raise
                self.report.bad(err)
                continue
            kept.append((line, row, score))
        self._path = path
        splits = self._by_split(kept, lambda item: (item[1]["dataset"], item[1]["qid"]))
        return {name: self._generate_examples(name, items) for name, items in splits.items()}

    def _generate_examples(self, split, items):
        lengths = self.lengths.setdefault(split, [])
        for line, row, score in items:
            query = self._texts.query(row, self._path, line)
            passages = self._texts.passages(row, self._path, line)
            example = {k: row[k] for k in ("dataset", "qid", "initial_list", "final_list", "reasoning",
                                            "relevant_docids")}
            example.update(query=query, passages=[_passage_text(p) for p in passages],
                           ndcg_at_10=score, source_line=line)
            if self.tokenized:
                from reasonrank_jax.text import build_prompt

                prompt = build_prompt(self.tokenizer, query, passages, mode=self.options.mode,
                                      max_passage_length=self.options.max_passage_length)
                ids = np.asarray(self.tokenizer(prompt, add_special_tokens=False)["input_ids"], np.int32)
                example["prompt_ids"] = ids
                lengths.append(len(ids))
            self.report.keep(row["dataset"])
            yield str(line), example


def _passage_text(passage: dict) -> str:
    title = passage.get("title", "").strip()
    return f"Title: {title} Content: {passage['text']}" if title else passage["text"]


def _find_one(manual: str, name: str | None, pattern: str) -> str:
    if name:
        path = os.path.join(manual, name)
        if not os.path.isfile(path):
            raise InputError("file not found", path=path)
        return path
    found = sorted(glob.glob(os.path.join(manual, pattern)))
    if not found:
        raise InputError(f"no {pattern} file (expected exactly one)", path=manual)
    if len(found) > 1:
        raise InputError(f"expected exactly one {pattern} file, found {len(found)}; name it explicitly",
                         path=manual)
    return found[0]


class ReasonrankSft(_ManualBuilder):
    """Alpaca records (system, instruction, output); tokenized: input_ids + prompt_length."""

    def _features(self):
        features = {"system": _Text(), "instruction": _Text(), "output": _Text(), "dataset": _Text(),
                    "qid": _Text(), "source_index": np.int32}
        if self.tokenized:
            features.update(input_ids=_Ids, prompt_length=np.int32)
        return features

    @classmethod
    def check_manual_dir(cls, manual, options):
        _find_one(manual, options.sft_file, "*.json")

    def _split_generators(self, dl_manager):
        path = _find_one(str(dl_manager.manual_dir), self.options.sft_file, "*.json")
        with open_text(path) as f:
            try:
                records = json.load(f)
            except json.JSONDecodeError as err:
                raise InputError(f"invalid JSON: {err.msg}", path=path, line=err.lineno) from None
        if not isinstance(records, list):
            raise InputError("expected a JSON list of Alpaca records", path=path)
        self._path = path
        good = []
        for i, record in enumerate(records):
            self.report.total += 1
            missing = [k for k in ("instruction", "output") if not isinstance(
                record.get(k) if isinstance(record, dict) else None, str)]
            if missing:
                err = InputError(f"record {i}: missing or non-string {', '.join(missing)}", path=path,
                                 field=missing[0])
                if self.options.strict:
                    raise err
                self.report.bad(err)
                continue
            example = {"system": str(record.get("system") or ""), "instruction": record["instruction"],
                       "output": record["output"], "dataset": str(record.get("dataset") or ""),
                       "qid": str(record.get("qid") or ""), "source_index": i}
            if self.tokenized:  # before splitting, so that no split ends up empty after drops
                ids, prompt_length, status = stream.tokenize_sft(
                    self.tokenizer, example["system"], example["instruction"], example["output"],
                    self.options.max_length, self.options.overflow)
                self._count(status)
                if ids is None:
                    self.report.drop(example["dataset"] or "unknown", status)
                    continue
                example.update(input_ids=ids, prompt_length=prompt_length)
            good.append(example)
        splits = self._by_split(good, lambda e: (e["dataset"], e["qid"]) if e["qid"] else ("", e["instruction"]))
        return {name: self._generate_examples(name, items) for name, items in splits.items()}

    def _generate_examples(self, split, items):
        lengths = self.lengths.setdefault(split, [])
        for example in items:
            if self.tokenized:
                lengths.append(len(example["input_ids"]))
            self.report.keep(example["dataset"] or "unknown")
            yield str(example["source_index"]), example


def _as_str_list(value) -> list[str]:
    return [str(x) for x in (value.tolist() if hasattr(value, "tolist") else value)]


def _as_messages(value) -> list[dict]:
    """The parquet ``prompt`` column: a list of {role, content} (or a JSON string of one)."""
    if isinstance(value, str):
        value = json.loads(value)
    messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in value]
    if not messages:
        raise ValueError("empty prompt")
    return messages


class ReasonrankRl(_ManualBuilder):
    """RL records; tokenized: prompt_ids (prompts over max_prompt_length dropped)."""

    def _features(self):
        features = {"prompt": tfds.features.Sequence({"role": _Text(), "content": _Text()}),
                    "label": _Text(), "initial_list": _Str, "final_list": _Str, "relevant_docids": _Str,
                    "dataset": _Text(), "qid": _Text(), "source_index": np.int32}
        if self.tokenized:
            features["prompt_ids"] = _Ids
        return features

    @classmethod
    def check_manual_dir(cls, manual, options):
        _find_one(manual, options.rl_file, "*.parquet")

    def _split_generators(self, dl_manager):
        import pyarrow.parquet as pq

        path = _find_one(str(dl_manager.manual_dir), self.options.rl_file, "*.parquet")
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as err:  # pyarrow raises several types for a bad file
            raise InputError(f"cannot read parquet: {err}", path=path) from None
        good = []
        for i, row in enumerate(rows):
            self.report.total += 1
            try:
                record = {"prompt": _as_messages(row["prompt"]), "label": str(row["label"]),
                          "initial_list": _as_str_list(row["initial_list"]),
                          "final_list": _as_str_list(row["final_list"]),
                          "relevant_docids": _as_str_list(row["relevant_docids"]),
                          "dataset": str(row.get("dataset") or ""), "qid": str(row.get("qid") or ""),
                          "source_index": i}
            except (KeyError, TypeError, ValueError) as err:
                bad = InputError(f"row {i}: bad or missing field {err}", path=path)
                if self.options.strict:
                    raise bad from None
                self.report.bad(bad)
                continue
            if self.tokenized:  # before splitting, so that no split ends up empty after drops
                ids, status = stream.tokenize_rl(self.tokenizer, record["prompt"], self.options.max_prompt_length)
                self._count(status)
                if ids is None:
                    self.report.drop(record["dataset"] or "unknown", status)
                    continue
                record["prompt_ids"] = ids
            good.append(record)
        splits = self._by_split(good, lambda r: (r["dataset"], r["qid"]) if r["qid"]
                                else ("", r["prompt"][-1]["content"]))
        return {name: self._generate_examples(name, items) for name, items in splits.items()}

    def _generate_examples(self, split, items):
        lengths = self.lengths.setdefault(split, [])
        for record in items:
            if self.tokenized:
                lengths.append(len(record["prompt_ids"]))
            self.report.keep(record["dataset"] or "unknown")
            yield str(record["source_index"]), record


class Bright(_ManualBuilder):
    """BRIGHT queries with their first-stage candidates (and passage texts when a corpus is there)."""

    BUILDER_CONFIGS = [_TEXT_CONFIGS[0]]

    def _features(self):
        return {"dataset": _Text(), "qid": _Text(), "query": _Text(), "reasoning": _Text(),
                "gold_ids": _Str, "gold_ids_long": _Str, "excluded_ids": _Str, "gold_answer": _Text(),
                "candidates": _Str, "candidate_scores": tfds.features.Tensor(shape=(None,), dtype=np.float32),
                "candidate_texts": _Str}

    @classmethod
    def check_manual_dir(cls, manual, options):
        from reasonrank_jax.data import bright_files

        if not bright_files.find(manual, options.retriever):
            raise InputError("no BRIGHT examples found (expected examples/{dataset}.jsonl[.gz], optional "
                             "documents/ and runs/{retriever}/)", path=manual)

    def _split_generators(self, dl_manager):
        from reasonrank_jax.data import bright_files

        files = bright_files.find(str(dl_manager.manual_dir), self.options.retriever)
        per_dataset = {dataset: list(self._examples(dataset, paths)) for dataset, paths in files.items()}
        return {dataset: self._generate_examples(items) for dataset, items in per_dataset.items() if items}

    def _generate_examples(self, items):
        yield from items

    def _examples(self, dataset, paths):
        from reasonrank_jax.data import bright_files

        run = bright_files.read_run(paths["run"], self.options.top_k) if paths.get("run") else {}
        corpus = bright_files.read_corpus(paths["documents"]) if paths.get("documents") else None
        for example in bright_files.read_examples(paths["examples"], dataset):
            self.report.total += 1
            ranked = run.get(example["qid"], [])
            example["candidates"] = [d for d, _ in ranked]
            example["candidate_scores"] = np.asarray([s for _, s in ranked], np.float32)
            example["candidate_texts"] = []
            if corpus is not None:
                missing = [d for d, _ in ranked if d not in corpus]
                if missing:
                    self.report.drop(dataset, "candidate_not_in_corpus")
                    self.report.errors.append(f"{paths['documents']}: {len(missing)} candidates of query "
                                              f"{example['qid']} not in the corpus, e.g. {missing[0]!r}")
                    continue
                example["candidate_texts"] = [corpus[d] for d, _ in ranked]
            self.report.keep(dataset)
            yield example["qid"], example


BUILDERS = {"raw": ReasonrankRaw, "sft": ReasonrankSft, "rl": ReasonrankRl, "bright": Bright}


def build(kind: str, manual_dir: str, data_dir: str, options: BuildOptions | None = None):
    """Build one dataset; returns (version directory, builder) with ``builder.report`` and ``token_counts`` filled in.

    Writes ``build_report.json`` and (tokenized configs) ``lengths-{split}.npy`` next to the records. The build is
    made in a temporary directory beside the version directory and moved there only once complete: a failed build
    leaves no version directory behind, and a failed rebuild (``options.overwrite``) leaves the previous build
    intact. Nothing else under ``data_dir`` is touched.
    """
    options = options or BuildOptions()
    if kind not in BUILDERS:
        raise InputError(f"unknown dataset kind {kind!r}; choose from {', '.join(BUILDERS)}", field="kind")
    builder_cls = BUILDERS[kind]
    if not os.path.isdir(manual_dir):
        raise InputError("manual directory not found", path=manual_dir)
    builder_cls.check_manual_dir(manual_dir, options)
    version_dir = os.path.join(data_dir, builder_cls.relative_dir(options))
    _check_replaceable(version_dir, options.overwrite)
    os.makedirs(os.path.dirname(version_dir), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(version_dir)}.building-",
                               dir=os.path.dirname(version_dir))
    try:
        builder = _build_into(builder_cls, manual_dir, staging, options)
        _move_into_place(str(builder.data_dir), version_dir, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return version_dir, builder


def _check_replaceable(version_dir: str, overwrite: bool) -> None:
    """Refuse before any work: a previous build needs `overwrite`, and anything else there is not ours to replace."""
    if not os.path.lexists(version_dir):
        return
    if not os.path.isfile(os.path.join(version_dir, "dataset_info.json")):
        raise InputError("exists but is not a dataset build (no dataset_info.json); move it away first",
                         path=version_dir)
    if not overwrite:
        raise InputError("already built; pass --overwrite to rebuild", path=version_dir)


def _build_into(builder_cls, manual_dir: str, root: str, options: BuildOptions) -> _ManualBuilder:
    """The whole build, records and side files, under the TFDS data dir `root`."""
    builder = builder_cls(options=options, data_dir=root, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    version_dir = str(builder.data_dir)
    for split, lengths in builder.lengths.items():
        if lengths:
            np.save(os.path.join(version_dir, f"lengths-{split}.npy"), np.asarray(lengths, np.int32))
    report = dict(builder.report.to_dict(), token_counts=builder.token_counts,
                  options=dataclasses.asdict(builder.options))
    _write_json_atomically(os.path.join(version_dir, "build_report.json"), report)
    return builder


def _write_json_atomically(path: str, value) -> None:
    # open() rather than mkstemp, so the file gets the umask's mode like the records beside it, not 0600.
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1)
    os.replace(tmp, path)


def _move_into_place(built: str, version_dir: str, staging: str) -> None:
    """Rename `built` to `version_dir`. A previous build is moved into `staging` (deleted with it) only now, and moved
    back if the new one cannot take its place."""
    previous = os.path.join(staging, "previous")
    replacing = os.path.lexists(version_dir)
    if replacing:
        os.rename(version_dir, previous)
    try:
        os.rename(built, version_dir)
    except BaseException:  # even on Ctrl-C: `previous` is deleted with `staging`
        if replacing:
            os.rename(previous, version_dir)
        raise


def data_source(version_dir: str, split: str = "train"):
    """Random-access records of one split (``len(ds)``, ``ds[i]``); strings come back as bytes."""
    if not os.path.isfile(os.path.join(version_dir, "dataset_info.json")):
        raise InputError("not a built dataset directory (no dataset_info.json)", path=version_dir)
    sources = tfds.builder_from_directory(version_dir).as_data_source()
    if split not in sources:
        raise InputError(f"no split {split!r}; splits: {', '.join(sorted(sources))}", path=version_dir)
    return sources[split]


def split_lengths(version_dir: str, split: str = "train") -> np.ndarray:
    """Token lengths of a tokenized split, index-aligned with its data source."""
    path = os.path.join(version_dir, f"lengths-{split}.npy")
    if not os.path.isfile(path):
        raise InputError("no lengths file: build the tokenized config", path=path)
    return np.load(path)
