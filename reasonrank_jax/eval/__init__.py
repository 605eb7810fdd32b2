"""Evaluation: TREC run/qrels files (trec), BRIGHT examples (bright), trec_eval-exact metrics (metrics),
and the `reasonrank-jax eval` command (cli)."""
