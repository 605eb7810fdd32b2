"""Evaluation: TREC run/qrels files (trec), BRIGHT examples (bright), trec_eval-exact metrics (metrics),
and the `reasonrank-jax eval` command (cli)."""

from reasonrank_jax.eval.bright import DATASETS, load_bright_examples
from reasonrank_jax.eval.metrics import aggregate, drop_excluded, evaluate, parse_metrics
from reasonrank_jax.eval.trec import read_qrels, read_run, read_run_lists, write_qrels, write_run

__all__ = ["DATASETS", "load_bright_examples", "aggregate", "drop_excluded", "evaluate", "parse_metrics",
           "read_qrels", "read_run", "read_run_lists", "write_qrels", "write_run"]
