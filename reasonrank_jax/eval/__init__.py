"""Evaluation: TREC run/qrels files (trec), BRIGHT examples (bright), trec_eval-exact metrics (metrics),
and the `reasonrank-jax eval` command (cli).

Names are imported on first use (PEP 562), so that importing a command module stays light.
"""

from reasonrank_jax.lazy import lazy_getattr

_EXPORTS = {
    "DATASETS": "reasonrank_jax.eval.bright",
    "load_bright_examples": "reasonrank_jax.eval.bright",
    "aggregate": "reasonrank_jax.eval.metrics",
    "drop_excluded": "reasonrank_jax.eval.metrics",
    "evaluate": "reasonrank_jax.eval.metrics",
    "parse_metrics": "reasonrank_jax.eval.metrics",
    "read_qrels": "reasonrank_jax.eval.trec",
    "read_run": "reasonrank_jax.eval.trec",
    "read_run_lists": "reasonrank_jax.eval.trec",
    "write_qrels": "reasonrank_jax.eval.trec",
    "write_run": "reasonrank_jax.eval.trec",
}
__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
