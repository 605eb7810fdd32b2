"""`reasonrank-jax rerank`: sliding-window reranking of a first-stage TREC run with a Hugging Face checkpoint.

Outputs in --out: run.trec (every candidate once, scores n - rank + 1), windows.jsonl (one record per window),
done.jsonl (one line per finished query, appended and fsync'd: the resume log), settings.json (what the rankings
depend on), config.yaml (the resolved config) and summary.json; nothing is written before the model has loaded, and
an --out holding anything else is refused. Restarted with the same --out and the same settings, queries in done.jsonl are skipped
and their windows are not redone (windows of unfinished queries are); the final run is written from done.jsonl, so
an interrupted and resumed job writes the same run as an uninterrupted one. Different settings are refused.
Candidates below --top keep their first-stage order after the reranked ones.

Across processes (`launch local -n N -- rerank ...`, or one process per host of a pod; `distributed.initialize`
joins them): each query belongs to one process, by a stable hash of its qid (`query_process`), and each process
decodes its queries on its own devices with its own engine (no collectives for the model), logging them to
done.process-<i>.jsonl and windows.process-<i>.jsonl, so that each resumes on its own. Process 0 alone checks --out,
writes config.yaml and settings.json (the others write nothing before it has) and prints; after a barrier it merges
run.trec, windows.jsonl (grouped by query, in run order) and summary.json: the same run as one process writes.
--out must be a directory every process sees (a shared file system on a pod). Any process count resumes any other's
job: every done*.jsonl in --out counts, and each process redoes only the unfinished queries now its own. A failure
in one process (bad input found there) is reported by every process at the next barrier instead of leaving them
waiting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time

from reasonrank_jax.config import ConfigCheckError, OneOf, option
from reasonrank_jax.errors import InputError
from reasonrank_jax.inputs import read_corpus as load_corpus, read_queries as load_queries  # the field rule


@dataclasses.dataclass(frozen=True)
class RerankConfig:
    model: str | None = option(required=True, metavar="CKPT_DIR",
                               help="Hugging Face checkpoint directory (with tokenizer files)")
    tokenizer: str | None = option(metavar="DIR", help="tokenizer directory (default: --model)")
    run: str | None = option(required=True, metavar="FILE", help="first-stage TREC run (plain or .gz)")
    corpus: str | None = option(required=True, metavar="FILE",
                                help="corpus: JSONL/JSON/TSV/parquet, plain or .gz (field rule: README, Input formats)")
    queries: str | None = option(metavar="FILE", help="queries: JSONL/JSON/TSV (qid<TAB>query)/parquet")
    bright_examples: str | None = option(metavar="FILE", help="BRIGHT examples file (queries and gold_ids)")
    out: str | None = option(required=True, metavar="DIR",
                             help="output directory: new, empty, or an earlier rerank's (resumed)")
    overwrite: bool = option(False, help="allow --out to be a directory holding other files")
    window: int = option(20, min=1, help="passages per window")
    step: int = option(10, min=1, help="window stride (<= --window, so every rank of the top is reranked)")
    top: int = option(100, min=1, help="rerank the first-stage top-N")
    mode: str = option("rank_GPT_reasoning", choices=("rank_GPT_reasoning", "rank_GPT_qwen3", "rank_GPT"),
                       help="prompt and decoding mode (SPEC 1)")
    max_passage_length: int = option(512, min=1, help="tokens per passage (BEIR: 100)")
    max_new_tokens: int | None = option(min=1, help="default: the mode's (3172 for reasoning modes)")
    slots: int = option(8, min=1, help="sequences decoded together")
    max_len: int | None = option(min=1, help="KV cache slots per sequence (default: longest prompt bucket + max "
                                             "new tokens)")
    dtype: str = option("bfloat16", choices=("float32", "bfloat16"), help="compute and weight dtype")
    scheduler: str = option("slots", choices=("slots", "barrier"),
                            help="slots: refill a decode slot as soon as a window ends; barrier: the original's")
    eval: str | None = option(metavar="QRELS", help="print metrics before and after (with --bright-examples: "
                                                    "gold_ids unless QRELS is given)")
    max_queries: int | None = option(min=1, help="only the first N queries of the run")

    ONE_OF = (OneOf(("queries", "bright_examples")),)

    def check(self) -> None:
        if self.step > self.window:
            raise ConfigCheckError("step", f"must be <= window ({self.window}), got {self.step}: ranks between "
                                           "windows would never be reranked")


CONFIG = RerankConfig


_DONE_KEYS = ("qid", "ranking", "windows", "parse_failures", "tokens_in", "tokens_out")
_PROCESS_DONE = re.compile(r"done\.process-(\d+)\.jsonl")


def query_process(qid: str, num_processes: int) -> int:
    """The process that reranks `qid`: sha256 of its UTF-8 bytes modulo the process count, the same in every process
    and every run (not Python's salted hash(); not crc32, whose low bits barely move between "q1", "q2", ...)."""
    return int.from_bytes(hashlib.sha256(qid.encode("utf-8")).digest()[:8], "big") % num_processes


def log_names(process_index: int, num_processes: int) -> tuple[str, str]:
    """The resume log and window log a process appends to: done.jsonl / windows.jsonl when it is the only one."""
    if num_processes == 1:
        return "done.jsonl", "windows.jsonl"
    return f"done.process-{process_index}.jsonl", f"windows.process-{process_index}.jsonl"


def _logs_in(out_dir: str) -> list[tuple[str, str]]:
    """(resume log, its window log) of every process count that has run in out_dir: done.jsonl, then each
    done.process-<i>.jsonl by i."""
    names = [log_names(0, 1)]
    if os.path.isdir(out_dir):
        found = (_PROCESS_DONE.fullmatch(name) for name in os.listdir(out_dir))
        indices = sorted((int(m.group(1)), m.group(1)) for m in found if m)
        names += [(f"done.process-{i}.jsonl", f"windows.process-{i}.jsonl") for _, i in indices]
    return [(os.path.join(out_dir, done), os.path.join(out_dir, windows)) for done, windows in names]


def _read_done(path: str) -> tuple[dict[str, dict], int]:
    """The resume log (qid -> record) and its length without a torn last line (a kill mid-write).

    Read only: a line that is not a finished-query record means the file is not ours, an input error."""
    from reasonrank_jax.inputs import read_jsonl_log

    if not os.path.exists(path):
        return {}, 0
    records, good_bytes, _ = read_jsonl_log(path, _DONE_KEYS)
    return {record["qid"]: record for record in records}, good_bytes


def _read_all_done(out_dir: str) -> tuple[dict[str, dict], dict[str, str]]:
    """Every finished query of every resume log in out_dir (qid -> record; the first log's if two have one), and the
    window log that holds each one's windows (qid -> path)."""
    done, owner = {}, {}
    for done_path, windows_path in _logs_in(out_dir):
        for qid, record in _read_done(done_path)[0].items():
            if qid not in done:
                done[qid], owner[qid] = record, windows_path
    return done, owner


def _merged_windows(owner: dict[str, str], qids: list[str]) -> str:
    """windows.jsonl across processes: each query's window records (in the order they ran) from the log of the
    process that finished it, the job's queries in run order, then any other finished query of --out."""
    by_log: dict[str, dict[str, list[str]]] = {}
    for path in dict.fromkeys(owner.values()):
        lines = by_log.setdefault(path, {})
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    if line.endswith("\n"):
                        lines.setdefault(json.loads(line)["qid"], []).append(line)
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
    order = list(dict.fromkeys([q for q in qids if q in owner] + list(owner)))
    return "".join(line for qid in order for line in by_log[owner[qid]].get(qid, []))


def _compare_settings(path: str, settings: dict) -> None:
    """A resumed job must rank as the interrupted one did: refuse an --out written with other settings."""
    if not os.path.exists(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            previous = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError("not valid JSON; is this --out another job's?", path=path) from None
    if not isinstance(previous, dict):
        raise InputError("expected a JSON object; is this --out another job's?", path=path)
    for key, value in settings.items():
        if previous.get(key) != value:
            raise InputError(f"--out holds a job run with {key}={previous.get(key)!r}, not {value!r}; "
                             "use another --out", path=path, field=key)


def _keep_finished_windows(path: str, done: dict) -> None:
    """Drop window records of unfinished queries (their windows are redone) and any torn line; atomic rewrite."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                if line.endswith("\n") and json.loads(line)["qid"] in done:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    from reasonrank_jax.outputs import atomic_write

    atomic_write(path, "".join(kept))


class _FittingPrompter:
    """The prompter, refusing (as bad input, not a crash) a window prompt that does not fit the KV cache."""

    def __init__(self, prompter, max_len: int, max_new_tokens: int):
        from reasonrank_jax.inference.decode import bucket_length

        self.prompter, self.max_len, self.max_new_tokens = prompter, max_len, max_new_tokens
        self.bucket_length = bucket_length

    def prompt_ids(self, state, window):
        ids = self.prompter.prompt_ids(state, window)
        if self.bucket_length(len(ids)) + self.max_new_tokens > self.max_len:
            raise InputError(f"the prompt of query {state.qid!r}, window {list(window)} has {len(ids)} tokens "
                             f"(bucket {self.bucket_length(len(ids))}) + {self.max_new_tokens} new tokens > "
                             f"{self.max_len}; raise --max-len or lower --max-passage-length", field="--max-len")
        return ids

    def decode(self, tokens):
        return self.prompter.decode(tokens)


def _append_line(f, record: dict) -> None:
    f.write(json.dumps(record) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _evaluate(label: str, run: dict, qrels: dict) -> None:
    from reasonrank_jax.eval import aggregate, evaluate

    metrics = ["ndcg_cut.10", "ndcg_cut.5", "recall.10", "recall.100", "map"]
    per_query = evaluate(run, qrels, metrics)
    means = aggregate(per_query, metrics)
    print(f"{label:12s} " + "  ".join(f"{k}={100 * v:.2f}" for k, v in means.items()) +
          f"  ({len(per_query)} queries)")


_WAIT_MS = 2**31 - 1  # about 24 days: a dead process ends the wait sooner (the coordination service's heartbeats)


def _agree(stage: str, error: Exception | None) -> None:
    """With several processes: a barrier at which each learns whether any failed before it (this one's error is raised
    again; another's becomes an error naming that process), so that none is left waiting for a failed one."""
    import jax

    if jax.process_count() == 1:
        if error is not None:
            raise error
        return
    import numpy as np
    from jax.experimental import multihost_utils

    from reasonrank_jax import distributed

    # First wait on the coordination service, which has no deadline worth the name: processes reach the barrier hours
    # apart (each decodes its own queries), and a CPU (gloo) collective gives up after 30 s if it is the first, after
    # 30 min otherwise. Then the barrier proper, which the processes now reach together.
    from jax._src import distributed as jax_distributed

    jax_distributed.global_state.client.wait_at_barrier(f"rerank-{stage}-wait", _WAIT_MS)
    distributed.barrier(f"rerank-{stage}")
    code = 0 if error is None else 2 if isinstance(error, InputError) else 1
    codes = [int(c) for c in np.asarray(multihost_utils.process_allgather(np.int32(code))).reshape(-1)]
    if error is not None:
        raise error
    failed = [i for i, c in enumerate(codes) if c]
    if failed:
        message = (f"process {failed[0]} of {len(codes)} failed ({stage}); its output says why"
                   + (f" (so did processes {failed[1:]})" if len(failed) > 1 else ""))
        raise InputError(message) if codes[failed[0]] == 2 else RuntimeError(message)


def main(args: RerankConfig) -> int:
    from reasonrank_jax import distributed

    distributed.initialize()  # joins the other processes, if any: before anything touches a jax backend
    import jax
    from tqdm import tqdm

    from reasonrank_jax.eval import load_bright_examples, read_qrels, read_run_lists
    from reasonrank_jax.inference.decode import bucket_length
    from reasonrank_jax.inference.engine import DecodeEngine
    from reasonrank_jax.inference.rerank import (WindowPrompter, make_query_state, rerank_barrier, rerank_slots,
                                                 trec_lines)
    from reasonrank_jax.models import decode_params, load_pretrained
    from reasonrank_jax.outputs import OutputDir, atomic_write
    from reasonrank_jax.text import SAMPLING_DEFAULTS, eos_token_ids, load_tokenizer

    started = time.perf_counter()
    index, count = jax.process_index(), jax.process_count()
    primary = index == 0
    out_file = lambda name: os.path.join(args.out, name)  # noqa: E731
    done_path, windows_path = (out_file(name) for name in log_names(index, count))
    settings_path = out_file("settings.json")
    error = None
    try:  # the start: with several processes, a failure here is every process's (see _agree)
        out = OutputDir(args.out, "rerank", args.overwrite, legacy_markers=("settings.json",)) if primary else None
        run = read_run_lists(args.run)
        if not run:
            raise InputError("the run has no queries: nothing to rerank", path=args.run)
        qrels = None
        if args.bright_examples:
            bright = load_bright_examples(args.bright_examples)
            queries = {example["id"]: example["query"] for example in bright.examples}
            qrels = bright.qrels
        else:
            queries = load_queries(args.queries)
        if args.eval:
            qrels = read_qrels(args.eval)
        qids = list(run)[: args.max_queries] if args.max_queries else list(run)
        missing = [qid for qid in qids if qid not in queries]
        if missing:
            raise InputError(f"query {missing[0]!r} of the run is missing from the queries ({len(missing)} missing)",
                             path=args.queries or args.bright_examples)
        ranked = {qid: [entry.docid for entry in run[qid]] for qid in qids}
        mine = [qid for qid in qids if count == 1 or query_process(qid, count) == index]
        corpus = load_corpus(args.corpus, {d for qid in mine for d in ranked[qid][: args.top]})

        defaults = SAMPLING_DEFAULTS[args.mode]
        max_new_tokens = args.max_new_tokens or defaults.max_new_tokens
        settings = {
            "model": os.path.abspath(args.model), "tokenizer": os.path.abspath(args.tokenizer or args.model),
            "run": os.path.abspath(args.run), "window": args.window, "step": args.step, "top": args.top,
            "mode": args.mode, "max_passage_length": args.max_passage_length, "max_new_tokens": max_new_tokens,
            "dtype": args.dtype}
        if primary:
            _compare_settings(settings_path, settings)
        # Every log in --out, whichever process count wrote it; nobody appends before the barrier below.
        done, _ = _read_all_done(args.out)
        own_bytes = _read_done(done_path)[1]
        todo = [make_query_state(qid, queries[qid], ranked[qid], args.window, args.step, args.top)
                for qid in qids if qid not in done]
        states = [s for s in todo if count == 1 or query_process(s.qid, count) == index]

        tokenizer = load_tokenizer(args.tokenizer or args.model)
        prompter = WindowPrompter(tokenizer, corpus, args.mode, args.max_passage_length)
        # Longest possible prompt: the template around `window` passages of at most max_passage_length tokens each
        # (over every query of the job, so that each process sizes the cache as one process would).
        longest_query = max((len(tokenizer.encode(queries[q], add_special_tokens=False)) for q in qids), default=0)
        prompt_bound = 400 + 2 * longest_query + args.window * (args.max_passage_length + 12)
        max_len = args.max_len or bucket_length(prompt_bound) + max_new_tokens
        device = jax.local_devices()[0]  # this process's own: the engine never spans processes
        with jax.default_device(device):
            cfg, params = load_pretrained(args.model, dtype=args.dtype)
            params = decode_params(params)  # the engine's layout; dropping the stacked copy keeps one set of weights
            engine = DecodeEngine(cfg, params, num_slots=args.slots, max_len=max_len,
                                  eos_ids=eos_token_ids(tokenizer), temperature=defaults.temperature,
                                  top_p=defaults.top_p, top_k=defaults.top_k, min_p=defaults.min_p,
                                  max_new_tokens=max_new_tokens)
    except Exception as err:  # noqa: BLE001 (raised again by _agree)
        error = err
    _agree("start", error)

    # The job has really started (in every process): only now is anything written into --out, by process 0 first.
    try:
        if primary:
            out.record_config(args)
            atomic_write(settings_path, json.dumps(settings, indent=2))
    except Exception as err:  # noqa: BLE001 (raised again by _agree)
        error = err
    _agree("out", error)
    if not primary and not os.path.isfile(settings_path):
        error = InputError(f"process {index} does not see the settings.json process 0 wrote: --out must be a "
                           "directory every process shares", path=args.out, field="--out")
    _agree("shared-out", error)

    if os.path.exists(done_path):
        with open(done_path, "r+b") as f:
            f.truncate(own_bytes)  # drop a torn last line
    _keep_finished_windows(windows_path, done)
    total_windows = sum(len(s.windows) for s in todo)
    if count > 1 and primary:
        print(f"rerank: {len(qids)} queries ({len(done)} already done), {total_windows} windows to run over {count} "
              f"processes ({sum(len(s.windows) for s in states)} in process 0), {args.slots} slots each, "
              f"{args.scheduler} scheduler, devices {jax.local_devices()} (process 0)", flush=True)
    elif primary:
        print(f"rerank: {len(qids)} queries ({len(done)} already done), {total_windows} windows to run, "
              f"{args.slots} slots, {args.scheduler} scheduler, devices {jax.devices()}", flush=True)

    try:
        with open(done_path, "a", encoding="utf-8") as done_file, \
                open(windows_path, "a", encoding="utf-8") as windows_file, \
                tqdm(total=sum(len(s.windows) for s in states), unit="window", desc="rerank", dynamic_ncols=True,
                     disable=not primary) as progress, jax.default_device(device):
            def on_window(record):
                windows_file.write(json.dumps(record) + "\n")
                windows_file.flush()
                progress.update(1)
                progress.set_postfix(tokens_out=engine.tokens_out, refresh=False)

            def on_query_done(state):
                record = {"qid": state.qid, "ranking": state.final_ranking(), "windows": len(state.windows),
                          "parse_failures": state.parse_failures, "tokens_in": state.tokens_in,
                          "tokens_out": state.tokens_out}
                _append_line(done_file, record)
                done[state.qid] = record

            schedule = rerank_slots if args.scheduler == "slots" else rerank_barrier
            schedule(engine, states, _FittingPrompter(prompter, max_len, max_new_tokens), on_window=on_window,
                     on_query_done=on_query_done)
    except Exception as err:  # noqa: BLE001 (raised again by _agree)
        if count == 1:
            raise
        error = err
    if count > 1:
        _agree("decode", error)  # every process's queries are logged (or the job stops here, resumable)
        if not primary:
            return 0
        done, owner = _read_all_done(args.out)
        lost = [qid for qid in qids if qid not in done]
        if lost:
            raise InputError(f"{len(lost)} finished queries (e.g. {lost[0]!r}, process "
                             f"{query_process(lost[0], count)}) are in no done*.jsonl process 0 sees: --out must "
                             "be a directory every process shares", path=args.out, field="--out")

    atomic_write(out_file("run.trec"), "".join("\n".join(trec_lines(qid, done[qid]["ranking"])) + "\n"
                                               for qid in qids))
    if count > 1 or len(_logs_in(args.out)) > 1:  # windows of other process counts' logs: one windows.jsonl
        if count == 1:
            owner = _read_all_done(args.out)[1]
        atomic_write(out_file("windows.jsonl"), _merged_windows(owner, qids))
    wall = time.perf_counter() - started
    records = [done[q] for q in qids]
    summary = {"queries": len(qids), "windows": sum(r["windows"] for r in records),
               "tokens_in": sum(r["tokens_in"] for r in records), "tokens_out": sum(r["tokens_out"] for r in records),
               "parse_failures": sum(r["parse_failures"] for r in records), "wall_time_s": round(wall, 3),
               "queries_per_s": round(len(todo) / wall, 4), "scheduler": args.scheduler, "slots": args.slots}
    if count > 1:
        summary["processes"] = count
    atomic_write(out_file("summary.json"), json.dumps(summary, indent=2))
    print(json.dumps(summary))
    if qrels is not None:
        first_stage = {qid: {e.docid: e.score for e in run[qid]} for qid in qids}
        reranked = {qid: {d: float(len(done[qid]["ranking"]) - i) for i, d in enumerate(done[qid]["ranking"])}
                    for qid in qids}
        _evaluate("first stage", first_stage, qrels)
        _evaluate("reranked", reranked, qrels)
    return 0
