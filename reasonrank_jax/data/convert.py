"""Raw rows -> SFT (Alpaca) and RL records (SPEC 6), and filtering a raw file.

The prompt is the exact inference prompt (``reasonrank_jax.text``), so training and reranking
see the same protocol; the SFT response is ``<think>{reasoning}</think> <answer>[i] > [j] ...</answer>``
with i, j the 1-based positions of ``final_list`` ids in ``initial_list``.
"""

from __future__ import annotations

import json
from typing import Iterator

from reasonrank_jax.data.filter import DEFAULT_ALPHA, keeps, self_consistency_scores
from reasonrank_jax.data.records import RawTexts, Report, read_raw_rows
from reasonrank_jax.errors import InputError


def ranking_label(initial_list: list[str], final_list: list[str]) -> str:
    """The teacher ranking as identifiers into the window: ``[3] > [1] > [2]``."""
    from reasonrank_jax.text import format_ranking

    position = {docid: i + 1 for i, docid in enumerate(initial_list)}
    seen, ids = set(), []
    for docid in final_list:
        if docid not in seen:  # a repeated id keeps its first rank, as in the filter's run
            seen.add(docid)
            ids.append(position[docid])
    return format_ranking(ids)


def sft_response(reasoning: str, label: str) -> str:
    return f"<think>{reasoning.strip()}</think> <answer>{label}</answer>"


def _messages(row: dict, texts: RawTexts, tokenizer, mode: str, max_passage_length: int,
              path: str, line: int | None) -> list[dict]:
    from reasonrank_jax.text import build_messages

    return build_messages(tokenizer, texts.query(row, path, line), texts.passages(row, path, line),
                          mode=mode, max_passage_length=max_passage_length)


def raw_to_sft(row: dict, texts: RawTexts, tokenizer, mode: str = "rank_GPT_reasoning",
               max_passage_length: int = 512, path: str = "", line: int | None = None) -> dict:
    """One Alpaca record: system, instruction (the user prompt), output; plus dataset and qid."""
    messages = _messages(row, texts, tokenizer, mode, max_passage_length, path, line)
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    instruction = next(m["content"] for m in messages if m["role"] == "user")
    label = ranking_label(row["initial_list"], row["final_list"])
    return {"system": system, "instruction": instruction,
            "output": sft_response(row["reasoning"], label),
            "dataset": row["dataset"], "qid": row["qid"]}


def raw_to_rl(row: dict, texts: RawTexts, tokenizer, mode: str = "rank_GPT_reasoning",
              max_passage_length: int = 512, path: str = "", line: int | None = None) -> dict:
    """One RL record: prompt (chat messages), label, the lists, dataset, qid."""
    messages = _messages(row, texts, tokenizer, mode, max_passage_length, path, line)
    return {"prompt": messages, "label": ranking_label(row["initial_list"], row["final_list"]),
            "initial_list": row["initial_list"], "final_list": row["final_list"],
            "relevant_docids": row["relevant_docids"], "dataset": row["dataset"], "qid": row["qid"]}


def filter_raw(path: str, alpha: float = DEFAULT_ALPHA, report: Report | None = None,
               strict: bool = False) -> Iterator[tuple[int, dict, float]]:
    """Yield (line, row, nDCG@10) for the rows the self-consistency filter keeps.

    Every row is counted in ``report``: kept, dropped ('ndcg<alpha', per domain) or bad (file:line).
    """
    report = report if report is not None else Report()
    rows = list(read_raw_rows(path, report, strict))
    scores = self_consistency_scores(row for _, row in rows)
    for (line, row), score in zip(rows, scores):
        if keeps(score, alpha):
            report.keep(row["dataset"])
            yield line, row, score
        else:
            report.drop(row["dataset"], f"ndcg@10<{alpha:g}")


def write_jsonl(path: str, records) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n


def check_alpha(alpha: float) -> float:
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}", field="alpha")
    return alpha
