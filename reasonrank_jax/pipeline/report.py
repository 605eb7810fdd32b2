"""The demo's results: evaluation of each stage's run, results.json, plots and report.md."""

from __future__ import annotations

import json
import os

from reasonrank_jax.outputs import atomic_write

METRICS = ("ndcg_cut.10", "recall.10")
STAGE_NAMES = {"first_stage": "first stage (retriever)", "sft": "SFT", "grpo": "SFT + GRPO"}


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def evaluate_runs(runs: dict[str, str], qrels_path: str) -> dict[str, dict[str, float]]:
    """{stage: {metric: mean over the run's queries}}, scored on the queries of the reranked runs (trec_eval
    semantics, reasonrank_jax.eval)."""
    from reasonrank_jax.eval.metrics import aggregate, evaluate
    from reasonrank_jax.eval.trec import read_qrels, read_run

    qrels = read_qrels(qrels_path)
    loaded = {stage: read_run(path) for stage, path in runs.items()}
    qids = sorted(set.intersection(*(set(run) for run in loaded.values())))  # sorted: the same sums every process
    qrels = {q: qrels[q] for q in qids if q in qrels}
    results = {}
    for stage, run in loaded.items():
        means = aggregate(evaluate({q: run[q] for q in qids}, qrels, list(METRICS)), list(METRICS))
        results[stage] = {m: float(means[m.replace(".", "_")]) for m in METRICS}
    return results


def table_lines(results: dict[str, dict[str, float]], reference: dict | None = None) -> list[str]:
    lines = ["| stage | nDCG@10 | Recall@10 |", "| --- | ---: | ---: |"]
    for stage, values in results.items():
        lines.append(f"| {STAGE_NAMES.get(stage, stage)} | {values['ndcg_cut.10']:.4f} | {values['recall.10']:.4f} |")
    if reference:
        for key, label in (("teacher", "teacher (the SFT targets)"), ("oracle_windows", "perfect window ranker")):
            if key in reference:
                lines.append(f"| *{label}* | *{reference[key]:.4f}* | |")
    return lines


def plot_curves(path: str, sft_metrics: list[dict], grpo_metrics: list[dict], grpo_evals: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    if sft_metrics:
        ax.plot([m["step"] for m in sft_metrics], [m["loss"] for m in sft_metrics], label="train loss", lw=1)
        held = [m for m in sft_metrics if "heldout_loss" in m]
        if held:
            ax.plot([m["step"] for m in held], [m["heldout_loss"] for m in held], "o-", label="held-out loss")
        ax.set_yscale("log")
        ax.legend()
    ax.set_title("SFT: response-token loss")
    ax.set_xlabel("step")
    ax = axes[1]
    if grpo_metrics:
        ax.plot([m["step"] for m in grpo_metrics], [m["reward_mean"] for m in grpo_metrics], label="rollout reward",
                lw=1)
        if grpo_evals:
            for key, label in (("heldout_reward_mean", "held-out reward (greedy)"),
                               ("heldout_sampled_reward_mean", "held-out reward (sampled)")):
                ax.plot([e["step"] for e in grpo_evals if key in e], [e[key] for e in grpo_evals if key in e], "o-",
                        label=label)
        ax.legend()
    ax.set_title("GRPO: multi-view reward")
    ax.set_xlabel("step")
    fig.tight_layout()
    save_png(fig, path)


def plot_stages(path: str, results: dict[str, dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    stages = list(results)
    x = np.arange(len(stages))
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (metric, label) in enumerate((("ndcg_cut.10", "nDCG@10"), ("recall.10", "Recall@10"))):
        values = [results[s][metric] for s in stages]
        bars = ax.bar(x + (i - 0.5) * 0.38, values, 0.38, label=label)
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(x, [STAGE_NAMES.get(s, s) for s in stages])
    ax.set_ylim(0, 1.05)
    ax.set_title("held-out queries")
    ax.legend(loc="lower right")
    fig.tight_layout()
    save_png(fig, path)


def save_png(fig, path: str) -> None:
    """Write a matplotlib figure as a PNG atomically (a temporary file beside it, then renamed) and close it."""
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write_report(pipeline, runs: dict[str, str]) -> dict:
    """Evaluate, print the table, write results.json, plots/ and report.md. Returns the stage record."""
    results = evaluate_runs(runs, pipeline.inputs()["qrels"])
    data_record = pipeline.done("data") or {}
    reference = data_record.get("reference_ndcg")
    num_queries = _num_queries(runs["first_stage"], list(runs.values())[-1])
    atomic_write(pipeline.path("results.json"), json.dumps(results, indent=1) + "\n")

    sft_metrics = read_jsonl(pipeline.path("sft", "metrics.jsonl"))
    grpo_metrics = read_jsonl(pipeline.path("grpo", "metrics.jsonl"))
    grpo_evals = read_jsonl(pipeline.path("grpo", "eval.jsonl"))
    plot_curves(pipeline.path("plots", "training_curves.png"), sft_metrics, grpo_metrics, grpo_evals)
    plot_stages(pipeline.path("plots", "stage_metrics.png"), results)

    table = table_lines(results, reference)
    print(f"\nheld-out queries: {num_queries}")
    print("\n".join(table))
    times = {name: (pipeline.done(name) or {}).get("seconds") for name in pipeline.stages() if name != "report"}
    times = {k: v if v is not None else pipeline.stage_times.get(k) for k, v in times.items()}
    lines = [
        "# ReasonRank demo report", "",
        f"Config: [config.yaml](config.yaml) (seed {pipeline.config.seed}). "
        f"Evaluated on {num_queries} held-out queries (sliding window {pipeline.rerank_settings()['window']}, "
        f"step {pipeline.rerank_settings()['step']}, top {pipeline.rerank_settings()['top']}).", "",
        *table, "",
        "Figures: [results.json](results.json).", "",
        "## Plots", "",
        "![training curves](plots/training_curves.png)", "",
        "![per-stage metrics](plots/stage_metrics.png)", "",
        "## Outputs", "",
        "| what | where |", "| --- | --- |",
    ]
    outputs = [("data (task files, filter report, TFDS)", "data/"), ("SFT run (config, metrics, TensorBoard)", "sft/"),
               ("GRPO run (config, metrics, TensorBoard)", "grpo/"), ("exported SFT model", "export/sft/"),
               ("final model (Hugging Face)", "model/"), ("reranked runs (TREC)", "rerank/")]
    for what, where in outputs:
        if os.path.exists(pipeline.path(where)):
            lines.append(f"| {what} | [{where}]({where}) |")
    lines += ["", "## Stage times (seconds)", "", "| stage | seconds |", "| --- | ---: |"]
    lines += [f"| {k} | {v:.1f} |" for k, v in times.items() if v is not None]
    atomic_write(pipeline.path("report.md"), "\n".join(lines) + "\n")
    print(f"\nwrote {pipeline.path('report.md')}, {pipeline.path('results.json')} and plots in "
          f"{pipeline.path('plots')}")
    return {"results": results}


def _num_queries(*paths: str) -> int:
    from reasonrank_jax.eval.trec import read_run

    return len(set.intersection(*(set(read_run(p)) for p in paths)))
