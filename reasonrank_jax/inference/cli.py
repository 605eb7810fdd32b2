"""`reasonrank-jax rerank`: sliding-window reranking of a first-stage TREC run with a Hugging Face checkpoint.

Outputs in --out: run.trec (every candidate once, scores n - rank + 1), windows.jsonl (one record per window),
done.jsonl (one line per finished query, appended and fsync'd: the resume log), settings.json (what the rankings
depend on) and summary.json. Restarted with the same --out and the same settings, queries in done.jsonl are skipped
and their windows are not redone (windows of unfinished queries are); the final run is written from done.jsonl, so
an interrupted and resumed job writes the same run as an uninterrupted one. Different settings are refused.
Candidates below --top keep their first-stage order after the reranked ones.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from reasonrank_jax.errors import InputError

_ID_FIELDS = ("id", "_id", "docid", "qid")
_QUERY_FIELDS = ("query", "text", "question")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Hugging Face checkpoint directory (with tokenizer files)")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: --model)")
    parser.add_argument("--run", required=True, help="first-stage TREC run (plain or .gz)")
    parser.add_argument("--corpus", required=True, help="corpus JSONL (id/_id/docid + contents/text/content, title)")
    queries = parser.add_mutually_exclusive_group(required=True)
    queries.add_argument("--queries", help="queries: JSONL (id/qid/_id + query/text) or TSV (qid<TAB>query)")
    queries.add_argument("--bright-examples", help="BRIGHT examples file (queries and gold_ids)")
    parser.add_argument("--out", required=True, help="output directory (resumable)")
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--step", type=int, default=10)
    parser.add_argument("--top", type=int, default=100, help="rerank the first-stage top-N (default 100)")
    parser.add_argument("--mode", default="rank_GPT_reasoning",
                        choices=("rank_GPT_reasoning", "rank_GPT_qwen3", "rank_GPT"))
    parser.add_argument("--max-passage-length", type=int, default=512, help="tokens per passage (BEIR: 100)")
    parser.add_argument("--max-new-tokens", type=int, help="default: the mode's (3172 for reasoning modes)")
    parser.add_argument("--slots", type=int, default=8, help="sequences decoded together")
    parser.add_argument("--max-len", type=int, help="KV cache slots per sequence (default: longest prompt bucket "
                                                     "+ max new tokens)")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--scheduler", default="slots", choices=("slots", "barrier"))
    parser.add_argument("--eval", metavar="QRELS", help="print metrics before and after (with --bright-examples: "
                                                         "gold_ids unless QRELS is given)")
    parser.add_argument("--max-queries", type=int, help="only the first N queries of the run")


def _read_jsonl(path: str):
    from reasonrank_jax.eval.trec import open_text

    if not os.path.isfile(path):
        raise InputError("file not found", path=path)
    with open_text(path) as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"not valid JSON: {err.msg}", path=path, line=line_number) from None
            if not isinstance(record, dict):
                raise InputError("expected a JSON object", path=path, line=line_number)
            yield line_number, record


def _first(record: dict, fields: tuple[str, ...], path: str, line: int, what: str):
    for field in fields:
        if record.get(field) is not None:
            return str(record[field])
    raise InputError(f"missing {what} (one of {', '.join(fields)})", path=path, line=line, field=fields[0])


def load_corpus(path: str, needed: set[str]) -> dict[str, dict]:
    """Only the documents the run needs: BRIGHT and BEIR corpora are large."""
    corpus = {}
    for line, record in _read_jsonl(path):
        docid = _first(record, _ID_FIELDS, path, line, "document id")
        if docid not in needed:
            continue
        text = next((record[f] for f in ("contents", "text", "content", "body", "passage") if f in record), None)
        if text is None:
            raise InputError("missing document text", path=path, line=line, field="contents")
        corpus[docid] = {"title": record.get("title") or "", "text": str(text)}
    missing = needed - corpus.keys()
    if missing:
        raise InputError(f"{len(missing)} documents of the run are not in the corpus, e.g. {sorted(missing)[0]!r}",
                         path=path)
    return corpus


def load_queries(path: str) -> dict[str, str]:
    from reasonrank_jax.eval.trec import open_text

    if not os.path.isfile(path):
        raise InputError("file not found", path=path)
    if path.endswith((".tsv", ".tsv.gz", ".txt")):
        queries = {}
        with open_text(path) as f:
            for line_number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                parts = line.rstrip("\n").split("\t", 1)
                if len(parts) != 2:
                    raise InputError("expected 'qid<TAB>query'", path=path, line=line_number)
                queries[parts[0]] = parts[1]
        return queries
    return {_first(r, _ID_FIELDS, path, line, "query id"): _first(r, _QUERY_FIELDS, path, line, "query text")
            for line, r in _read_jsonl(path)}


def _read_done(path: str) -> dict[str, dict]:
    """The resume log; a torn last line (a kill mid-write) is ignored and truncated away."""
    done = {}
    if not os.path.exists(path):
        return done
    good_bytes = 0
    with open(path, "rb") as f:
        for raw in f:
            try:
                record = json.loads(raw)
            except json.JSONDecodeError:
                break
            if not raw.endswith(b"\n"):
                break
            done[record["qid"]] = record
            good_bytes += len(raw)
    with open(path, "r+b") as f:
        f.truncate(good_bytes)
    return done


def _check_positive(args) -> None:
    for name in ("window", "step", "top", "slots", "max_new_tokens", "max_len", "max_passage_length", "max_queries"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"must be >= 1, got {value}", field="--" + name.replace("_", "-"))


def _check_settings(path: str, settings: dict) -> None:
    """A resumed job must rank as the interrupted one did: refuse an --out written with other settings."""
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                previous = json.load(f)
        except json.JSONDecodeError:
            previous = None  # torn by a kill before any query finished: nothing to protect
        if isinstance(previous, dict):
            for key, value in settings.items():
                if previous.get(key) != value:
                    raise InputError(f"--out holds a job run with {key}={previous.get(key)!r}, not {value!r}; "
                                     "use another --out", path=path, field=key)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=2)
    os.replace(path + ".tmp", path)


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
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)


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


def main(args) -> int:
    import jax
    from tqdm import tqdm

    from reasonrank_jax.eval import load_bright_examples, read_qrels, read_run_lists
    from reasonrank_jax.inference.decode import bucket_length
    from reasonrank_jax.inference.engine import DecodeEngine
    from reasonrank_jax.inference.rerank import (WindowPrompter, make_query_state, rerank_barrier, rerank_slots,
                                                 trec_lines)
    from reasonrank_jax.models import decode_params, load_pretrained
    from reasonrank_jax.text import SAMPLING_DEFAULTS, eos_token_ids, load_tokenizer

    _check_positive(args)
    started = time.perf_counter()
    run = read_run_lists(args.run)
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
    corpus = load_corpus(args.corpus, {d for qid in qids for d in ranked[qid][: args.top]})

    os.makedirs(args.out, exist_ok=True)
    done_path, windows_path = os.path.join(args.out, "done.jsonl"), os.path.join(args.out, "windows.jsonl")
    defaults = SAMPLING_DEFAULTS[args.mode]
    max_new_tokens = args.max_new_tokens or defaults.max_new_tokens
    _check_settings(os.path.join(args.out, "settings.json"), {
        "model": os.path.abspath(args.model), "tokenizer": os.path.abspath(args.tokenizer or args.model),
        "run": os.path.abspath(args.run), "window": args.window, "step": args.step, "top": args.top,
        "mode": args.mode, "max_passage_length": args.max_passage_length, "max_new_tokens": max_new_tokens,
        "dtype": args.dtype})
    done = _read_done(done_path)
    _keep_finished_windows(windows_path, done)
    states = [make_query_state(qid, queries[qid], ranked[qid], args.window, args.step, args.top)
              for qid in qids if qid not in done]

    tokenizer = load_tokenizer(args.tokenizer or args.model)
    prompter = WindowPrompter(tokenizer, corpus, args.mode, args.max_passage_length)
    # Longest possible prompt: the template around `window` passages of at most max_passage_length tokens each.
    longest_query = max((len(tokenizer.encode(queries[q], add_special_tokens=False)) for q in qids), default=0)
    prompt_bound = 400 + 2 * longest_query + args.window * (args.max_passage_length + 12)
    max_len = args.max_len or bucket_length(prompt_bound) + max_new_tokens
    cfg, params = load_pretrained(args.model, dtype=args.dtype)
    params = decode_params(params)  # the engine's layout; dropping the stacked copy keeps one set of weights
    engine = DecodeEngine(cfg, params, num_slots=args.slots, max_len=max_len, eos_ids=eos_token_ids(tokenizer),
                          temperature=defaults.temperature, top_p=defaults.top_p, top_k=defaults.top_k,
                          min_p=defaults.min_p, max_new_tokens=max_new_tokens)
    total_windows = sum(len(s.windows) for s in states)
    print(f"rerank: {len(qids)} queries ({len(done)} already done), {total_windows} windows to run, "
          f"{args.slots} slots, {args.scheduler} scheduler, devices {jax.devices()}", flush=True)

    with open(done_path, "a", encoding="utf-8") as done_file, \
            open(windows_path, "a", encoding="utf-8") as windows_file, \
            tqdm(total=total_windows, unit="window", desc="rerank", dynamic_ncols=True) as progress:
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

    with open(os.path.join(args.out, "run.trec"), "w", encoding="utf-8") as f:
        for qid in qids:
            f.write("\n".join(trec_lines(qid, done[qid]["ranking"])) + "\n")
    wall = time.perf_counter() - started
    records = [done[q] for q in qids]
    summary = {"queries": len(qids), "windows": sum(r["windows"] for r in records),
               "tokens_in": sum(r["tokens_in"] for r in records), "tokens_out": sum(r["tokens_out"] for r in records),
               "parse_failures": sum(r["parse_failures"] for r in records), "wall_time_s": round(wall, 3),
               "queries_per_s": round(len(states) / wall, 4), "scheduler": args.scheduler, "slots": args.slots}
    with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary))
    if qrels is not None:
        first_stage = {qid: {e.docid: e.score for e in run[qid]} for qid in qids}
        reranked = {qid: {d: float(len(done[qid]["ranking"]) - i) for i, d in enumerate(done[qid]["ranking"])}
                    for qid in qids}
        _evaluate("first stage", first_stage, qrels)
        _evaluate("reranked", reranked, qrels)
    return 0
