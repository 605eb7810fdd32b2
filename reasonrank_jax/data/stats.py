"""`data stats`: rows per domain, the share the self-consistency filter would drop, and length
percentiles in tokens (reasoning, SFT response and, with the text maps, the prompt)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from reasonrank_jax.data.filter import self_consistency_scores
from reasonrank_jax.data.records import Report, read_raw_rows

PERCENTILES = (50, 90, 99, 100)


def _percentiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    return {f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES} | {"mean": float(np.mean(values))}


def raw_stats(path: str, alpha: float = 0.4, raw_dir: str | None = None, tokenizer_dir: str | None = None,
              max_passage_length: int = 512) -> dict:
    from tqdm import tqdm

    report = Report()
    rows = [row for _, row in read_raw_rows(path, report)]
    scores = self_consistency_scores(rows)
    per_domain, dropped = Counter(r["dataset"] for r in rows), Counter()
    for row, score in zip(rows, scores):
        if score < alpha:
            dropped[row["dataset"]] += 1
    out = {"rows": report.total, "bad_rows": len(report.errors), "errors": report.errors[:20], "alpha": alpha,
           "domains": {d: {"rows": n, "filter_drops": dropped[d], "drop_share": dropped[d] / n}
                       for d, n in sorted(per_domain.items())},
           "drop_share": sum(dropped.values()) / len(rows) if rows else 0.0,
           "mean_ndcg_at_10": float(np.mean(scores)) if scores else 0.0,
           "candidates_per_row": _percentiles([len(r["initial_list"]) for r in rows])}
    if tokenizer_dir:
        from reasonrank_jax.data.convert import ranking_label, sft_response
        from reasonrank_jax.data.records import RawTexts
        from reasonrank_jax.data.stream import chat_prompt_text
        from reasonrank_jax.text import build_messages, load_tokenizer

        tokenizer = load_tokenizer(tokenizer_dir)
        texts = RawTexts(raw_dir) if raw_dir else None
        lengths: dict[str, list[int]] = {"reasoning_tokens": [], "response_tokens": [], "prompt_tokens": []}
        for row in tqdm(rows, desc="tokenize", unit="row"):
            n_tokens = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
            response = sft_response(row["reasoning"], ranking_label(row["initial_list"], row["final_list"]))
            lengths["reasoning_tokens"].append(n_tokens(row["reasoning"]))
            lengths["response_tokens"].append(n_tokens(response))
            if texts is not None:
                messages = build_messages(tokenizer, texts.query(row, path), texts.passages(row, path),
                                          mode="rank_GPT_reasoning", max_passage_length=max_passage_length)
                lengths["prompt_tokens"].append(n_tokens(chat_prompt_text(tokenizer, messages)))
        out["lengths"] = {k: _percentiles(v) for k, v in lengths.items() if v}
    return out


def format_stats(stats: dict) -> str:
    lines = [f"{stats['rows']} rows ({stats['bad_rows']} bad); filter at alpha {stats['alpha']:g} would drop "
             f"{100 * stats['drop_share']:.1f}% (mean nDCG@10 of final_list {stats['mean_ndcg_at_10']:.3f})",
             f"{'domain':<24}{'rows':>8}{'dropped':>9}{'share':>8}"]
    for domain, d in stats["domains"].items():
        lines.append(f"{domain:<24}{d['rows']:>8}{d['filter_drops']:>9}{100 * d['drop_share']:>7.1f}%")
    for name, p in {"candidates_per_row": stats["candidates_per_row"], **stats.get("lengths", {})}.items():
        if p:
            lines.append(f"{name}: " + ", ".join(f"{k} {v:.0f}" for k, v in p.items()))
    lines += [f"bad: {e}" for e in stats["errors"]]
    return "\n".join(lines)
