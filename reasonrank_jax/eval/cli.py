"""`reasonrank-jax eval RUN [RUN ...] (--qrels FILE | --bright-examples FILE_OR_DIR)`.

Prints a table with one row per run (named by the run file's dataset, e.g. ``biology.trec.gz`` ->
``biology``), the measures as percentages (nDCG@10 first), and, for several runs, the mean over
runs (the BRIGHT average is the mean of the per-dataset means). ``--json`` prints values in 0..1
with trec_eval-style dotted names (``ndcg_cut.10``); each value is the mean over the run's queries
that have qrels, and ``num_queries`` counts them.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from reasonrank_jax.config import ConfigCheckError, OneOf, option
from reasonrank_jax.errors import InputError

DEFAULT_METRICS = "ndcg_cut.10,ndcg_cut.1,ndcg_cut.5,recall.10,recall.100,mrr.10,map"
HEADLINE = "ndcg_cut_10"
_LABELS = {"ndcg_cut": "nDCG@{}", "recall": "R@{}", "P": "P@{}", "mrr": "MRR@{}"}
_PLAIN_LABELS = {"map": "MAP", "recip_rank": "MRR", "ndcg": "nDCG"}


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    runs: tuple[str, ...] = option((), positional=True, required=True, metavar="RUN",
                                   help="TREC run files (qid Q0 docid rank score tag), plain or gzip")
    qrels: str | None = option(metavar="FILE", help="TREC qrels file (qid iter docid rel)")
    bright_examples: str | None = option(
        metavar="FILE_OR_DIR", help="BRIGHT examples (.jsonl, .jsonl.gz, .parquet) whose gold_ids are the qrels; "
                                    "a directory matches each run to {dir}/{dataset}.jsonl(.gz) by the run's name")
    metrics: tuple[str, ...] = option(
        (DEFAULT_METRICS,), metavar="M",
        help="measures, comma- or space-separated: trec_eval names (ndcg_cut.10, recall.100, P.5, map, "
             "recip_rank, ndcg; a family alone such as ndcg_cut gives trec_eval's default cutoffs), mrr.10 "
             "(MRR@10), or ndcg@10-style aliases")
    per_query: bool = option(False, help="also print each query's values (tab-separated lines: run, qid, measure, "
                                         "value; with --json a 'per_query' object)")
    json: bool = option(False, help="print JSON instead of the table: flat {measure: mean, num_queries} for one "
                                    "run; {'runs': {name: ...}, 'mean': ...} for several")
    drop_excluded: bool = option(False, help="remove each query's BRIGHT excluded_ids from the run before scoring "
                                             "(off by default, as the paper scored)")

    ONE_OF = (OneOf(("qrels", "bright_examples")),)

    def check(self) -> None:
        from reasonrank_jax.eval.metrics import parse_metrics

        try:
            parse_metrics(self.metrics)
        except InputError as err:
            raise ConfigCheckError("metrics", str(err).removeprefix("[metrics]: ")) from None


CONFIG = EvalConfig


def main(args: EvalConfig) -> int:
    from reasonrank_jax.eval import metrics, trec

    names = metrics.parse_metrics(args.metrics)
    if HEADLINE in names:
        names.remove(HEADLINE)
        names.insert(0, HEADLINE)
    if args.drop_excluded and not args.bright_examples:
        raise InputError("--drop-excluded needs --bright-examples (qrels files carry no excluded ids)")
    labels = _run_labels(args.runs)
    shared = _load_judgements(args.qrels, args.bright_examples, None)
    results = {}
    for run_path, label in zip(args.runs, labels):
        qrels, excluded = shared if shared is not None else _load_judgements(None, args.bright_examples, run_path)
        run = trec.read_run(run_path)
        if args.drop_excluded:
            run = metrics.drop_excluded(run, excluded)
        per_query = metrics.evaluate(run, qrels, names)
        if not per_query:
            raise InputError("no query of the run has judgements in the qrels", path=run_path)
        skipped = len(run) - len(per_query)
        if skipped:
            print(f"{label}: {skipped} of {len(run)} queries have no judgements and are not scored",
                  file=sys.stderr)
        results[label] = per_query
    if args.json:
        _print_json(results, names, args.per_query)
    else:
        _print_table(results, names, args.per_query)
    return 0


def _load_judgements(qrels_path, examples_path, run_path):
    """(qrels, excluded) shared by all runs, or for one run when examples_path is a directory."""
    from reasonrank_jax.eval import bright, trec

    if qrels_path:
        return trec.read_qrels(qrels_path), {}
    if Path(examples_path).is_dir():
        if run_path is None:
            return None
        examples_path = bright.find_examples_file(examples_path, bright.dataset_name(run_path))
    data = bright.load_bright_examples(examples_path)
    return data.qrels, data.excluded


def _run_labels(paths: list[str]) -> list[str]:
    """Dataset names from the file names; the path itself where two runs share a name."""
    from reasonrank_jax.eval import bright

    names = [bright.dataset_name(p) for p in paths]
    return [p if names.count(n) > 1 else n for p, n in zip(paths, names)]


def _summary(per_query: dict, names: list[str]) -> dict:
    from reasonrank_jax.eval import metrics

    means = metrics.aggregate(per_query, names)
    return {**{metrics.dotted_name(n): means[n] for n in names}, "num_queries": len(per_query)}


def _mean_over_runs(summaries: list[dict], names: list[str]) -> dict:
    """Unweighted mean of the runs' means (the BRIGHT average over datasets)."""
    from reasonrank_jax.eval import metrics

    keys = [metrics.dotted_name(n) for n in names]
    mean = {k: sum(s[k] for s in summaries) / len(summaries) for k in keys}
    return {**mean, "num_queries": sum(s["num_queries"] for s in summaries), "num_runs": len(summaries)}


def _print_json(results: dict, names: list[str], per_query: bool) -> None:
    from reasonrank_jax.eval import metrics

    summaries = {}
    for label, values in results.items():
        summaries[label] = _summary(values, names)
        if per_query:
            summaries[label]["per_query"] = {
                qid: {metrics.dotted_name(n): v for n, v in q.items()} for qid, q in values.items()}
    if len(results) == 1:
        out = next(iter(summaries.values()))
    else:
        out = {"runs": summaries, "mean": _mean_over_runs(list(summaries.values()), names)}
    print(json.dumps(out, indent=2))


def _label(name: str) -> str:
    if name in _PLAIN_LABELS:
        return _PLAIN_LABELS[name]
    family, _, cutoff = name.rpartition("_")
    return _LABELS[family].format(cutoff)


def _print_table(results: dict, names: list[str], per_query: bool) -> None:
    from reasonrank_jax.eval import metrics

    if per_query:
        for label, values in results.items():
            for qid, q in values.items():
                for name in names:
                    print(f"{label}\t{qid}\t{metrics.dotted_name(name)}\t{q[name]:.4f}")
        print()
    summaries = [_summary(values, names) for values in results.values()]
    rows = [[label, str(s["num_queries"]), *(f"{100 * s[metrics.dotted_name(n)]:.2f}" for n in names)]
            for label, s in zip(results, summaries)]
    if len(rows) > 1:
        mean = _mean_over_runs(summaries, names)
        rows.append(["mean", str(mean["num_queries"]), *(f"{100 * mean[metrics.dotted_name(n)]:.2f}" for n in names)])
    header = ["dataset", "queries", *(_label(n) for n in names)]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for i, row in enumerate([header, *rows]):
        if i == len(rows) and len(rows) > 1:
            print("-" * (sum(widths) + 2 * (len(widths) - 1)))
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        print("  ".join(cells))
