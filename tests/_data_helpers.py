"""Small files in exactly the project's data schemas, for the data tests."""

from __future__ import annotations

import json
import os

import numpy as np

DATASETS = ("biology", "leetcode", "msmarco")


def make_raw_rows(num_rows: int = 40, seed: int = 0) -> list[dict]:
    """Valid raw rows: candidate lists of 3..20 ids, a teacher permutation, 0..4 positives."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(num_rows):
        dataset = DATASETS[i % len(DATASETS)]
        n = int(rng.integers(3, 21))
        pool = [f"{dataset[:3]}-d{j}" for j in range(60)]
        initial = [pool[j] for j in rng.choice(len(pool), n, replace=False)]
        final = [initial[j] for j in rng.permutation(n)]
        k = int(rng.integers(0, 5))
        # positives: mostly from the list, sometimes one outside it (mined but not retrieved)
        relevant = [initial[j] for j in rng.choice(n, min(k, n), replace=False)]
        if k and rng.random() < 0.2:
            relevant.append(f"{dataset[:3]}-outside{i}")
        rows.append({"dataset": dataset, "qid": f"q{i}", "initial_list": initial, "final_list": final,
                     "reasoning": f"Passage {final[0]} answers query {i} [1] best.",
                     "relevant_docids": relevant})
    return rows


BAD_LINES = [
    ("not json at all", "invalid JSON"),
    ('{"dataset": "biology", "qid": "bad1"}', "missing field"),
    ('{"dataset": "biology", "qid": "bad2", "initial_list": ["bio-d1"], "final_list": ["bio-d9"], '
     '"reasoning": "r", "relevant_docids": []}', "final_list"),
    ('{"dataset": "leetcode", "qid": "bad3", "initial_list": "bio-d1", "final_list": [], '
     '"reasoning": "r", "relevant_docids": []}', "initial_list"),
]


def write_raw_dir(root: str, rows: list[dict], bad_lines: bool = True, drop_query: str | None = None) -> str:
    """training_data_all.jsonl (+ bad lines) and id maps: biology .json, leetcode .jsonl, msmarco .jsonl
    with titles. ``drop_query``: a qid whose text is left out of the maps (a row bad at conversion)."""
    os.makedirs(os.path.join(root, "id_query"), exist_ok=True)
    os.makedirs(os.path.join(root, "id_doc"), exist_ok=True)
    with open(os.path.join(root, "training_data_all.jsonl"), "w") as f:
        for i, row in enumerate(rows):
            f.write(json.dumps(row) + "\n")
            if bad_lines and i % 10 == 3 and i // 10 < len(BAD_LINES):
                f.write(BAD_LINES[i // 10][0] + "\n")
            if i == 5:
                f.write("\n")  # blank lines are not rows
    for dataset in DATASETS:
        qids = [r["qid"] for r in rows if r["dataset"] == dataset and r["qid"] != drop_query]
        docids = sorted({d for r in rows if r["dataset"] == dataset for d in r["initial_list"]})
        queries = {q: f"What is [{q[1:]}] about {dataset}?" for q in qids}
        docs = {d: f"Text of {d}: some words about {dataset} and more." for d in docids}
        if dataset == "biology":
            json.dump(queries, open(os.path.join(root, "id_query", f"{dataset}.json"), "w"))
            json.dump(docs, open(os.path.join(root, "id_doc", f"{dataset}.json"), "w"))
        else:
            with open(os.path.join(root, "id_query", f"{dataset}.jsonl"), "w") as f:
                for q, t in queries.items():
                    f.write(json.dumps({"id": q, "text": t}) + "\n")
            with open(os.path.join(root, "id_doc", f"{dataset}.jsonl"), "w") as f:
                for d, t in docs.items():
                    record = {"docid": d, "contents": t}
                    if dataset == "msmarco":
                        record["title"] = f"Title {d}"
                    f.write(json.dumps(record) + "\n")
    return root


def pytrec_ndcg10(final_list: list[str], relevant: list[str]) -> float:
    """The independent reference: pytrec_eval's ndcg_cut_10 (0 for an empty positive set)."""
    import pytrec_eval

    if not relevant or not final_list:
        return 0.0
    run = {"q": {d: float(len(final_list) - r) for r, d in enumerate(final_list)}}
    evaluator = pytrec_eval.RelevanceEvaluator({"q": {d: 1 for d in relevant}}, {"ndcg_cut.10"})
    return evaluator.evaluate(run)["q"]["ndcg_cut_10"]
