"""Finding and reading a local BRIGHT directory for the ``bright`` builder.

Layout::

    BRIGHT_DIR/
      examples/{dataset}.jsonl[.gz]                 id, query, reasoning, gold_ids, gold_ids_long,
                                                    excluded_ids, gold_answer (HF xlangai/BRIGHT "examples")
      documents/{dataset}.jsonl[.gz] | .parquet     optional corpus: id + content (reasonrank_jax.inputs rule)
      runs/{retriever}/{dataset}.trec[.gz]          optional first-stage run, `qid Q0 docid rank score tag`
"""

from __future__ import annotations

import glob
import os

from reasonrank_jax import inputs
from reasonrank_jax.errors import InputError
from reasonrank_jax.eval import trec
from reasonrank_jax.eval.bright import load_bright_examples
from reasonrank_jax.eval.metrics import rank_documents


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for suffix in (".gz", ".jsonl", ".parquet", ".trec", ".txt"):
        name = name.removesuffix(suffix)
    return name


def find(root: str, retriever: str | None = None) -> dict[str, dict[str, str]]:
    """dataset -> {'examples': path, 'documents': path?, 'run': path?}."""
    runs_root = os.path.join(root, "runs")
    if retriever is None and os.path.isdir(runs_root):
        subdirs = sorted(d for d in os.listdir(runs_root) if os.path.isdir(os.path.join(runs_root, d)))
        if len(subdirs) > 1:
            raise InputError(f"several retrievers under runs/ ({', '.join(subdirs)}); choose one",
                             path=runs_root, field="retriever")
        retriever = subdirs[0] if subdirs else None
    out: dict[str, dict[str, str]] = {}
    for path in sorted(glob.glob(os.path.join(root, "examples", "*.jsonl*"))):
        out[_stem(path)] = {"examples": path}
    for path in sorted(glob.glob(os.path.join(root, "documents", "*"))):
        if _stem(path) in out:
            out[_stem(path)]["documents"] = path
    if retriever is not None:
        run_dir = os.path.join(runs_root, retriever)
        if not os.path.isdir(run_dir):
            raise InputError("run directory not found", path=run_dir, field="retriever")
        for path in sorted(glob.glob(os.path.join(run_dir, "*"))):
            if _stem(path) in out:
                out[_stem(path)]["run"] = path
    return out


def read_run(path: str, top_k: int) -> dict[str, list[tuple[str, float]]]:
    """qid -> [(docid, score)] in trec_eval order (score descending, ties by docid descending), top_k."""
    run = trec.read_run(path)
    return {qid: [(d, scores[d]) for d in rank_documents(scores)[:top_k]] for qid, scores in run.items()}


def read_corpus(path: str) -> dict[str, str]:
    """docid -> passage text (the document text of the field rule in :mod:`reasonrank_jax.inputs`)."""
    return {docid: doc["text"] for docid, doc in inputs.read_corpus(path).items()}


def read_examples(path: str, dataset: str) -> list[dict]:
    """BRIGHT examples (checked by the eval loader; a bad line raises InputError with file:line)."""
    return [{"dataset": dataset, "qid": e["id"], "query": e["query"], "reasoning": str(e.get("reasoning") or ""),
             "gold_ids": list(e["gold_ids"]), "gold_ids_long": [str(x) for x in e.get("gold_ids_long") or []],
             "excluded_ids": list(e["excluded_ids"]), "gold_answer": str(e.get("gold_answer") or "")}
            for e in load_bright_examples(path).examples]
