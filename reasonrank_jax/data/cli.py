"""`reasonrank-jax data build | filter | stats | synth`."""

from __future__ import annotations

import argparse
import json
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    sub.required = True

    b = sub.add_parser("build", help="build a TFDS array_record dataset from a local directory")
    b.add_argument("kind", choices=["raw", "sft", "rl", "bright"])
    b.add_argument("--manual-dir", required=True, help="the local source directory (layouts: README)")
    b.add_argument("--data-dir", required=True, help="TFDS data directory to write into")
    b.add_argument("--tokenizer", help="tokenizer directory: also store token ids (config 'tokenized')")
    b.add_argument("--alpha", type=float, default=0.4, help="raw: self-consistency threshold (default 0.4)")
    b.add_argument("--validation-fraction", type=float, default=0.05)
    b.add_argument("--max-length", type=int, default=23552, help="sft: max prompt+response tokens")
    b.add_argument("--overflow", choices=["truncate", "drop"], default="truncate",
                   help="sft: what to do with over-length examples")
    b.add_argument("--max-prompt-length", type=int, default=20480, help="rl: longer prompts are dropped")
    b.add_argument("--max-passage-length", type=int, default=512)
    b.add_argument("--file", help="sft/rl/raw: the source file name inside --manual-dir")
    b.add_argument("--retriever", help="bright: runs/<retriever>/ to read (default: the only one)")
    b.add_argument("--top-k", type=int, default=100, help="bright: candidates per query")
    b.add_argument("--strict", action="store_true", help="stop at the first bad row")
    b.set_defaults(_data_main=_build)

    f = sub.add_parser("filter", help="self-consistency filter: raw jsonl -> kept jsonl + report")
    f.add_argument("raw", help="training_data_all.jsonl")
    f.add_argument("--out", required=True, help="kept rows (jsonl)")
    f.add_argument("--report", help="write the accounting report (JSON) here")
    f.add_argument("--alpha", type=float, default=0.4)
    f.add_argument("--strict", action="store_true")
    f.add_argument("--raw-dir", help="directory with id_query/ and id_doc/ (needed for --sft-out/--rl-out)")
    f.add_argument("--tokenizer", help="tokenizer directory (needed for --sft-out/--rl-out)")
    f.add_argument("--sft-out", help="also write the SFT half as Alpaca JSON")
    f.add_argument("--rl-out", help="also write the RL half as parquet")
    f.add_argument("--sft-fraction", type=float, default=0.5, help="share of kept rows for SFT (by hash)")
    f.add_argument("--max-passage-length", type=int, default=512)
    f.set_defaults(_data_main=_filter)

    s = sub.add_parser("stats", help="counts per domain, token length percentiles, filter drop share")
    s.add_argument("raw", help="training_data_all.jsonl")
    s.add_argument("--alpha", type=float, default=0.4)
    s.add_argument("--raw-dir", help="directory with id_query/ and id_doc/ (for prompt lengths)")
    s.add_argument("--tokenizer", help="tokenizer directory (for lengths in tokens)")
    s.add_argument("--max-passage-length", type=int, default=512)
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(_data_main=_stats)

    y = sub.add_parser("synth", help="ask a teacher model (chat-completions API) for reasoning + rankings")
    y.add_argument("--endpoint", required=True, help="base URL (…/v1) or the …/chat/completions URL")
    y.add_argument("--model", required=True)
    y.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    y.add_argument("--tokenizer", required=True, help="tokenizer directory (passage truncation)")
    y.add_argument("--out", required=True, help="raw rows are appended here; a restart resumes")
    y.add_argument("--raw", help="rows with dataset, qid, initial_list (with --raw-dir)")
    y.add_argument("--raw-dir", help="directory with id_query/ and id_doc/")
    y.add_argument("--run", help="TREC run (with --corpus, --queries, --dataset)")
    y.add_argument("--corpus", help="jsonl/parquet with id and content")
    y.add_argument("--queries", help="jsonl (id, query) or TSV qid<TAB>text")
    y.add_argument("--dataset", help="dataset name written into the rows")
    y.add_argument("--top-k", type=int, default=20, help="candidates per query from the run")
    y.add_argument("--concurrency", type=int, default=8)
    y.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    y.add_argument("--max-retries", type=int, default=8)
    y.add_argument("--backoff", type=float, default=2.0, help="first retry delay in seconds (doubles)")
    y.add_argument("--temperature", type=float, help="sampling temperature (server default if unset)")
    y.add_argument("--max-tokens", type=int, help="max completion tokens (server default if unset)")
    y.add_argument("--max-passage-length", type=int, default=512)
    y.set_defaults(_data_main=_synth)


def main(args) -> int:
    return int(args._data_main(args) or 0)


def _check_alpha(alpha: float) -> None:
    from reasonrank_jax.errors import InputError

    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"--alpha must be in [0, 1], got {alpha}")


def _build(args) -> int:
    from reasonrank_jax.data.builders import BuildOptions, build

    _check_alpha(args.alpha)
    file_option = {"raw": "raw_file", "sft": "sft_file", "rl": "rl_file"}.get(args.kind)
    extra = {file_option: args.file} if (args.file and file_option) else {}
    options = BuildOptions(alpha=args.alpha, validation_fraction=args.validation_fraction,
                           tokenizer_dir=args.tokenizer, max_length=args.max_length, overflow=args.overflow,
                           max_prompt_length=args.max_prompt_length, max_passage_length=args.max_passage_length,
                           strict=args.strict, retriever=args.retriever, top_k=args.top_k, **extra)
    version_dir, builder = build(args.kind, args.manual_dir, args.data_dir, options)
    print(builder.report.summary())
    if builder.token_counts:
        print("tokenized: " + ", ".join(f"{k} {v}" for k, v in sorted(builder.token_counts.items())))
    print(f"wrote {version_dir}")
    return 0


def _filter(args) -> int:
    from reasonrank_jax.data.convert import filter_raw, write_jsonl
    from reasonrank_jax.data.records import Report
    from reasonrank_jax.errors import InputError

    _check_alpha(args.alpha)
    if (args.sft_out or args.rl_out) and not (args.raw_dir and args.tokenizer):
        raise InputError("--sft-out/--rl-out need --raw-dir and --tokenizer")
    report = Report()
    kept = [row for _, row, _ in filter_raw(args.raw, args.alpha, report, args.strict)]
    write_jsonl(args.out, kept)
    if args.sft_out or args.rl_out:
        _write_stages(args, kept, report)
    print(report.summary())
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump(report.to_dict(), f, indent=1)
    print(f"wrote {len(kept)} rows to {args.out}")
    return 0


def _write_stages(args, kept: list[dict], report) -> None:
    """The kept rows split by hash into the SFT (Alpaca JSON) and RL (parquet) halves."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from reasonrank_jax.data.convert import raw_to_rl, raw_to_sft
    from reasonrank_jax.data.filter import stage_of
    from reasonrank_jax.data.records import RawTexts
    from reasonrank_jax.errors import InputError
    from reasonrank_jax.text import load_tokenizer

    tokenizer, texts = load_tokenizer(args.tokenizer), RawTexts(args.raw_dir)
    sft, rl = [], []
    for row in tqdm(kept, desc="convert", unit="row"):
        stage = stage_of(row["dataset"], row["qid"], args.sft_fraction)
        try:
            if stage == "sft" and args.sft_out:
                sft.append(raw_to_sft(row, texts, tokenizer, max_passage_length=args.max_passage_length,
                                      path=args.raw))
            elif stage == "rl" and args.rl_out:
                rl.append(raw_to_rl(row, texts, tokenizer, max_passage_length=args.max_passage_length,
                                    path=args.raw))
        except InputError as err:
            if args.strict:
                raise
            report.bad(err)
    if args.sft_out:
        with open(args.sft_out, "w", encoding="utf-8") as f:
            json.dump(sft, f, ensure_ascii=False, indent=1)
        print(f"wrote {len(sft)} SFT records to {args.sft_out}")
    if args.rl_out:
        pq.write_table(pa.Table.from_pylist(rl), args.rl_out)
        print(f"wrote {len(rl)} RL records to {args.rl_out}")


def _stats(args) -> int:
    from reasonrank_jax.data.stats import raw_stats, format_stats

    _check_alpha(args.alpha)
    stats = raw_stats(args.raw, args.alpha, args.raw_dir, args.tokenizer, args.max_passage_length)
    print(json.dumps(stats, indent=1) if args.json else format_stats(stats))
    return 0


def _synth(args) -> int:
    from reasonrank_jax.data import synth
    from reasonrank_jax.errors import InputError
    from reasonrank_jax.text import load_tokenizer

    if args.raw:
        if not args.raw_dir:
            raise InputError("--raw needs --raw-dir (id_query/ and id_doc/)")
        jobs = synth.jobs_from_raw(args.raw, args.raw_dir)
    elif args.run:
        if not (args.corpus and args.queries and args.dataset):
            raise InputError("--run needs --corpus, --queries and --dataset")
        jobs = synth.jobs_from_run(args.run, args.corpus, args.queries, args.dataset, args.top_k)
    else:
        raise InputError("give the candidate lists: --raw ... or --run ...")
    api_key = os.environ.get(args.api_key_env)
    if not api_key:
        print(f"note: ${args.api_key_env} is not set; sending requests without an API key", file=sys.stderr)
    extra = {k: v for k, v in (("temperature", args.temperature), ("max_tokens", args.max_tokens))
             if v is not None}
    client = synth.ChatClient(args.endpoint, args.model, api_key, timeout=args.timeout,
                              max_retries=args.max_retries, backoff=args.backoff, extra_body=extra)
    try:
        stats = synth.synthesize(list(jobs), client, load_tokenizer(args.tokenizer), args.out,
                                 concurrency=args.concurrency, max_passage_length=args.max_passage_length)
    except synth.FatalHTTPError as err:
        raise InputError(str(err)) from None
    print(f"wrote {stats.written} rows to {args.out} ({stats.skipped_done} already there), "
          f"{client.retries} retried requests, {stats.bad_answers} malformed answers, "
          f"{len(stats.failed)} failed")
    for line in stats.failed[:20]:
        print(f"  failed: {line}", file=sys.stderr)
    return 1 if stats.failed else 0
