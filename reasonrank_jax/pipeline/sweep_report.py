"""A sweep's table and plots from its finished runs: results.csv (a row per run), results.md (a row per setting,
mean ± sample std over seeds), plots/curves.png (training curves per run) and plots/final.png (final metric per
setting, every seed shown)."""

from __future__ import annotations

import csv
import io
import json
import os
import statistics

from reasonrank_jax.outputs import atomic_write
from reasonrank_jax.pipeline.report import METRICS, read_jsonl, save_png

STAGES = ("first_stage", "sft", "grpo")
LABELS = {"ndcg_cut.10": "nDCG@10", "recall.10": "Recall@10", "first_stage": "first stage", "sft": "SFT",
          "grpo": "SFT+GRPO"}


def collect(sweep) -> list[dict]:
    """One row per finished run: setting, seed, run directory, overrides, {stage.metric: value}."""
    rows = []
    for run in sweep.runs:
        path = os.path.join(sweep.run_dir(run), "results.json")
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
        row = {"setting": run.setting, "seed": run.seed, "run": sweep.run_dir(run),
               "overrides": " ".join(f"{k}={v}" for k, v in run.overrides)}
        for stage in STAGES:
            for metric in METRICS:
                value = results.get(stage, {}).get(metric) if results.get(stage) else None
                row[f"{stage}.{metric}"] = value
        final = results.get("grpo") or results.get("sft") or {}
        for metric in METRICS:
            row[f"final.{metric}"] = final.get(metric)
        rows.append(row)
    return rows


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarize(rows: list[dict]) -> list[dict]:
    """Per setting (in sweep order): n, and mean/std of every stage.metric and final.metric over its seeds."""
    settings: dict[str, list[dict]] = {}
    for row in rows:
        settings.setdefault(row["setting"], []).append(row)
    out = []
    for setting, group in settings.items():
        summary = {"setting": setting, "n": len(group), "overrides": group[0]["overrides"]}
        for key in [f"{s}.{m}" for s in (*STAGES, "final") for m in METRICS]:
            values = [r[key] for r in group if r[key] is not None]
            if values:
                summary[key] = _mean_std(values)
        out.append(summary)
    return out


def _cell(pair) -> str:
    if pair is None:
        return "–"
    mean, std = pair
    return f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def markdown(summary: list[dict], total_runs: int, finished: int, metric: str) -> str:
    lines = [f"{finished} of {total_runs} runs finished; mean ± sample std over seeds (n), held-out queries.", "",
             f"| setting | n | final {LABELS[metric]} | first stage | SFT | SFT+GRPO | final Recall@10 |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in summary:
        lines.append(f"| {s['setting']} | {s['n']} | **{_cell(s.get(f'final.{metric}'))}** | "
                     f"{_cell(s.get(f'first_stage.{metric}'))} | {_cell(s.get(f'sft.{metric}'))} | "
                     f"{_cell(s.get(f'grpo.{metric}'))} | {_cell(s.get('final.recall.10'))} |")
    return "\n".join(lines) + "\n"


def plot_final(path: str, rows: list[dict], summary: list[dict], metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(summary) + 2), 4))
    for x, s in enumerate(summary):
        values = [r[f"final.{metric}"] for r in rows if r["setting"] == s["setting"] and r[f"final.{metric}"]
                  is not None]
        ax.scatter([x] * len(values), values, color="tab:blue", alpha=0.6, zorder=3, label="seed" if x == 0 else None)
        mean, std = s.get(f"final.{metric}", (None, None))
        if mean is not None:
            ax.errorbar([x + 0.15], [mean], yerr=[[std or 0]], fmt="D", color="tab:red", capsize=4, zorder=4,
                        label="mean ± std" if x == 0 else None)
        first = s.get(f"first_stage.{metric}")
        if first:
            ax.hlines(first[0], x - 0.3, x + 0.3, colors="gray", linestyles="dashed",
                      label="first stage" if x == 0 else None)
        sft = s.get(f"sft.{metric}")
        if sft:  # the SFT model's mean, so GRPO's margin reads off the plot
            ax.hlines(sft[0], x - 0.3, x + 0.3, colors="tab:green", linestyles="dotted",
                      label="SFT (mean)" if x == 0 else None)
    ax.set_xticks(range(len(summary)), [s["setting"] for s in summary], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(f"final {LABELS[metric]}")
    ax.set_title(f"final {LABELS[metric]} per setting (held-out queries)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def plot_curves(path: str, sweep, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    colors = {}
    for row in rows:
        color = colors.setdefault(row["setting"], f"C{len(colors) % 10}")
        label = row["setting"] if sum(1 for r in rows if r["setting"] == row["setting"] and r is not row
                                      and rows.index(r) < rows.index(row)) == 0 else None
        sft = read_jsonl(os.path.join(row["run"], "sft", "metrics.jsonl"))
        grpo = read_jsonl(os.path.join(row["run"], "grpo", "metrics.jsonl"))
        if sft:
            axes[0].plot([m["step"] for m in sft], [m["loss"] for m in sft], color=color, lw=0.8, alpha=0.7,
                         label=label)
        if grpo:
            axes[1].plot([m["step"] for m in grpo], [m["reward_mean"] for m in grpo], color=color, lw=0.8,
                         alpha=0.7, label=label)
    axes[0].set_title("SFT loss per run")
    axes[0].set_yscale("log")
    axes[1].set_title("GRPO rollout reward per run")
    for ax in axes:
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)


def write_sweep_report(sweep) -> dict:
    metric = sweep.spec.get("metric", "ndcg_cut.10")
    rows = collect(sweep)
    summary = summarize(rows)
    columns = ["setting", "seed", "overrides", *[f"{s}.{m}" for s in (*STAGES, "final") for m in METRICS], "run"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    atomic_write(os.path.join(sweep.out, "results.csv"), buffer.getvalue())
    table = markdown(summary, len(sweep.runs), len(rows), metric)
    atomic_write(os.path.join(sweep.out, "results.md"),
                 f"# sweep {os.path.basename(sweep.config.sweep)}\n\n{table}\n"
                 "![final metric per setting](plots/final.png)\n\n![training curves](plots/curves.png)\n")
    if rows:
        plot_final(os.path.join(sweep.out, "plots", "final.png"), rows, summary, metric)
        plot_curves(os.path.join(sweep.out, "plots", "curves.png"), sweep, rows)
    print(table, end="")
    print(f"wrote {sweep.out}/results.csv, results.md" + (" and plots/" if rows else ""))
    return {"rows": rows, "summary": summary}
