"""`reasonrank-jax data build | filter | stats | synth`."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from reasonrank_jax.config import ConfigCheckError, OneOf, option

_ALPHA_HELP = "self-consistency threshold: keep a row when nDCG@10 of its final_list is >= alpha"


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    kind: str | None = option(positional=True, required=True, choices=("raw", "sft", "rl", "bright"),
                              help="what to build")
    manual_dir: str | None = option(required=True, metavar="DIR", help="the local source directory (layouts: README)")
    data_dir: str | None = option(required=True, metavar="DIR", help="TFDS data directory to write into")
    overwrite: bool = option(False, help="rebuild a dataset version that is already built (swapped in only when "
                                         "the new build succeeds)")
    tokenizer: str | None = option(metavar="DIR", help="tokenizer directory: also store token ids (config "
                                                       "'tokenized')")
    alpha: float = option(0.4, min=0.0, max=1.0, help="raw: " + _ALPHA_HELP)
    validation_fraction: float = option(0.05, min=0.0, max=1.0, help="share of queries held out for validation")
    max_length: int = option(23552, min=1, help="sft: max prompt+response tokens")
    overflow: str = option("truncate", choices=("truncate", "drop"), help="sft: what to do with over-length examples")
    max_prompt_length: int = option(20480, min=1, help="rl: longer prompts are dropped")
    max_passage_length: int = option(512, min=1, help="tokens per passage")
    file: str | None = option(metavar="NAME", help="sft/rl/raw: the source file name inside --manual-dir")
    retriever: str | None = option(help="bright: runs/<retriever>/ to read (default: the only one)")
    top_k: int = option(100, min=1, help="bright: candidates per query")
    strict: bool = option(False, help="stop at the first bad row")


@dataclasses.dataclass(frozen=True)
class FilterConfig:
    raw: str | None = option(positional=True, required=True, metavar="RAW", help="training_data_all.jsonl")
    out: str | None = option(required=True, metavar="FILE", help="kept rows (jsonl)")
    report: str | None = option(metavar="FILE", help="write the accounting report (JSON) here")
    overwrite: bool = option(False, help="replace output files this command did not write")
    alpha: float = option(0.4, min=0.0, max=1.0, help=_ALPHA_HELP)
    strict: bool = option(False, help="stop at the first bad row")
    raw_dir: str | None = option(metavar="DIR", help="directory with id_query/ and id_doc/ (needed for "
                                                     "--sft-out/--rl-out)")
    tokenizer: str | None = option(metavar="DIR", help="tokenizer directory (needed for --sft-out/--rl-out)")
    sft_out: str | None = option(metavar="FILE", help="also write the SFT half as Alpaca JSON")
    rl_out: str | None = option(metavar="FILE", help="also write the RL half as parquet")
    sft_fraction: float = option(0.5, min=0.0, max=1.0, help="share of kept rows for SFT (by hash)")
    max_passage_length: int = option(512, min=1, help="tokens per passage")

    def check(self) -> None:
        if (self.sft_out or self.rl_out) and not (self.raw_dir and self.tokenizer):
            raise ConfigCheckError("sft_out" if self.sft_out else "rl_out", "--sft-out/--rl-out need --raw-dir "
                                                                            "and --tokenizer")


@dataclasses.dataclass(frozen=True)
class StatsConfig:
    raw: str | None = option(positional=True, required=True, metavar="RAW", help="training_data_all.jsonl")
    alpha: float = option(0.4, min=0.0, max=1.0, help=_ALPHA_HELP)
    raw_dir: str | None = option(metavar="DIR", help="directory with id_query/ and id_doc/ (for prompt lengths)")
    tokenizer: str | None = option(metavar="DIR", help="tokenizer directory (for lengths in tokens)")
    max_passage_length: int = option(512, min=1, help="tokens per passage")
    json: bool = option(False, help="print JSON instead of a table")


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    endpoint: str | None = option(required=True, metavar="URL",
                                  help="base URL (.../v1) or the .../chat/completions URL")
    model: str | None = option(required=True, help="the teacher model's name at the endpoint")
    api_key_env: str = option("OPENAI_API_KEY", metavar="VAR", help="environment variable holding the API key")
    tokenizer: str | None = option(required=True, metavar="DIR", help="tokenizer directory (passage truncation)")
    out: str | None = option(required=True, metavar="FILE",
                             help="raw rows are appended here; a restart resumes (an existing file must be this "
                                  "command's)")
    raw: str | None = option(metavar="FILE", help="rows with dataset, qid, initial_list (with --raw-dir)")
    raw_dir: str | None = option(metavar="DIR", help="directory with id_query/ and id_doc/")
    run: str | None = option(metavar="FILE", help="TREC run (with --corpus, --queries, --dataset)")
    corpus: str | None = option(metavar="FILE", help="corpus file (field rule: README, Input formats)")
    queries: str | None = option(metavar="FILE", help="queries file (field rule: README, Input formats)")
    dataset: str | None = option(help="dataset name written into the rows")
    top_k: int = option(20, min=1, help="candidates per query from the run")
    concurrency: int = option(8, min=1, help="requests in flight")
    timeout: float = option(600.0, min=0.001, help="seconds per request")
    max_retries: int = option(8, min=0, help="retries of a failed request (429, 5xx, timeouts)")
    backoff: float = option(2.0, min=0.0, help="first retry delay in seconds (doubles)")
    temperature: float | None = option(min=0.0, help="sampling temperature (server default if unset)")
    max_tokens: int | None = option(min=1, help="max completion tokens (server default if unset)")
    max_passage_length: int = option(512, min=1, help="tokens per passage")

    ONE_OF = (OneOf(("raw", "run")),)

    def check(self) -> None:
        if self.raw and not self.raw_dir:
            raise ConfigCheckError("raw", "--raw needs --raw-dir (id_query/ and id_doc/)")
        for name in ("corpus", "queries", "dataset"):
            if self.run and not getattr(self, name):
                raise ConfigCheckError("run", f"--run needs --corpus, --queries and --dataset (--{name} is missing)")


SUBCOMMANDS = {
    "build": (BuildConfig, "_build", "build a TFDS array_record dataset from a local directory"),
    "filter": (FilterConfig, "_filter", "self-consistency filter: raw jsonl -> kept jsonl + report"),
    "stats": (StatsConfig, "_stats", "counts per domain, token length percentiles, filter drop share"),
    "synth": (SynthConfig, "_synth", "ask a teacher model (chat-completions API) for reasoning + rankings"),
}


def _build(args: BuildConfig) -> int:
    from reasonrank_jax.config import to_yaml
    from reasonrank_jax.data.builders import BuildOptions, build
    from reasonrank_jax.outputs import atomic_write

    file_option = {"raw": "raw_file", "sft": "sft_file", "rl": "rl_file"}.get(args.kind)
    extra = {file_option: args.file} if (args.file and file_option) else {}
    options = BuildOptions(alpha=args.alpha, validation_fraction=args.validation_fraction,
                           tokenizer_dir=args.tokenizer, max_length=args.max_length, overflow=args.overflow,
                           max_prompt_length=args.max_prompt_length, max_passage_length=args.max_passage_length,
                           strict=args.strict, retriever=args.retriever, top_k=args.top_k, overwrite=args.overwrite,
                           **extra)
    version_dir, builder = build(args.kind, args.manual_dir, args.data_dir, options)
    atomic_write(os.path.join(version_dir, "config.yaml"), to_yaml(args, "data build"))
    print(builder.report.summary())
    if builder.token_counts:
        print("tokenized: " + ", ".join(f"{k} {v}" for k, v in sorted(builder.token_counts.items())))
    print(f"wrote {version_dir}")
    return 0


def _filter(args: FilterConfig) -> int:
    from reasonrank_jax.data.convert import filter_raw, write_jsonl
    from reasonrank_jax.data.records import Report
    from reasonrank_jax.outputs import OutputFiles

    outputs = OutputFiles("data filter", {"--out": args.out, "--report": args.report, "--sft-out": args.sft_out,
                                          "--rl-out": args.rl_out}, args.overwrite,
                          inputs={"RAW": args.raw})
    report = Report()
    kept = [row for _, row, _ in filter_raw(args.raw, args.alpha, report, args.strict)]
    stages = _convert_stages(args, kept, report) if (args.sft_out or args.rl_out) else {}
    outputs.write("--out", lambda tmp: write_jsonl(tmp, kept))
    if args.sft_out:
        outputs.write_text("--sft-out", json.dumps(stages["sft"], ensure_ascii=False, indent=1))
        print(f"wrote {len(stages['sft'])} SFT records to {args.sft_out}")
    if args.rl_out:
        import pyarrow as pa
        import pyarrow.parquet as pq

        outputs.write("--rl-out", lambda tmp: pq.write_table(pa.Table.from_pylist(stages["rl"]), tmp))
        print(f"wrote {len(stages['rl'])} RL records to {args.rl_out}")
    print(report.summary())
    if args.report:
        outputs.write_text("--report", json.dumps(report.to_dict(), indent=1))
    outputs.record_config(args)
    print(f"wrote {len(kept)} rows to {args.out}")
    return 0


def _convert_stages(args: FilterConfig, kept: list[dict], report) -> dict[str, list[dict]]:
    """The kept rows split by hash into the SFT (Alpaca records) and RL (parquet rows) halves."""
    from tqdm import tqdm

    from reasonrank_jax.data.convert import raw_to_rl, raw_to_sft
    from reasonrank_jax.data.filter import stage_of
    from reasonrank_jax.data.records import RawTexts
    from reasonrank_jax.errors import InputError
    from reasonrank_jax.text import load_tokenizer

    tokenizer, texts = load_tokenizer(args.tokenizer), RawTexts(args.raw_dir)
    stages = {"sft": [], "rl": []}
    for row in tqdm(kept, desc="convert", unit="row"):
        stage = stage_of(row["dataset"], row["qid"], args.sft_fraction)
        try:
            if stage == "sft" and args.sft_out:
                stages["sft"].append(raw_to_sft(row, texts, tokenizer, max_passage_length=args.max_passage_length,
                                                path=args.raw))
            elif stage == "rl" and args.rl_out:
                stages["rl"].append(raw_to_rl(row, texts, tokenizer, max_passage_length=args.max_passage_length,
                                              path=args.raw))
        except InputError as err:
            if args.strict:
                raise
            report.bad(err)
    return stages


def _stats(args: StatsConfig) -> int:
    from reasonrank_jax.data.stats import raw_stats, format_stats

    stats = raw_stats(args.raw, args.alpha, args.raw_dir, args.tokenizer, args.max_passage_length)
    print(json.dumps(stats, indent=1) if args.json else format_stats(stats))
    return 0


def _synth(args: SynthConfig) -> int:
    from reasonrank_jax.data import synth
    from reasonrank_jax.errors import InputError
    from reasonrank_jax.outputs import OutputLog
    from reasonrank_jax.text import load_tokenizer

    log = OutputLog("data synth", args.out, "--out", inputs={"--raw": args.raw, "--run": args.run,
                                                            "--corpus": args.corpus, "--queries": args.queries})
    synth.completed_keys(args.out)  # an existing --out must be this command's log: checked before any request
    if args.raw:
        jobs = list(synth.jobs_from_raw(args.raw, args.raw_dir))
    else:
        jobs = list(synth.jobs_from_run(args.run, args.corpus, args.queries, args.dataset, args.top_k))
    tokenizer = load_tokenizer(args.tokenizer)
    api_key = os.environ.get(args.api_key_env)
    if not api_key:
        print(f"note: ${args.api_key_env} is not set; sending requests without an API key", file=sys.stderr)
    extra = {k: v for k, v in (("temperature", args.temperature), ("max_tokens", args.max_tokens))
             if v is not None}
    client = synth.ChatClient(args.endpoint, args.model, api_key, timeout=args.timeout,
                              max_retries=args.max_retries, backoff=args.backoff, extra_body=extra)
    log.record_config(args)
    try:
        stats = synth.synthesize(jobs, client, tokenizer, args.out,
                                 concurrency=args.concurrency, max_passage_length=args.max_passage_length)
    except synth.FatalHTTPError as err:
        raise InputError(str(err)) from None
    print(f"wrote {stats.written} rows to {args.out} ({stats.skipped_done} already there), "
          f"{client.retries} retried requests, {stats.bad_answers} malformed answers, "
          f"{len(stats.failed)} failed")
    for line in stats.failed[:20]:
        print(f"  failed: {line}", file=sys.stderr)
    return 1 if stats.failed else 0
