"""Learning (issue 14 acceptance): on the synthetic ranking task (DESIGN.md, "The synthetic learning task"), a tiny
random Qwen2 (d64, 2 layers) trained from scratch by `train sft --config configs/sft_synthetic.yaml` on 2 CPU cores
lowers the held-out loss, and the exported model, reranking the held-out queries (`rerank`: windows of 8, step 4,
top 20, greedy `rank_GPT_reasoning`), answers >= 95% of its windows with a valid permutation. The SFT run is the
session fixture `sft_synthetic` (tests/conftest.py), so that other modules (GRPO) start from the same model.

nDCG@10 of the reranked run is reported next to the first stage's and the teacher's (printed, and recorded as junit
properties with the valid / identity / exact-transcript rates), not asserted: at this budget SFT learns the answer
format, not the teacher's skill (the think marks almost every passage `none`, the answer is mostly the identity).

Measured (valid rate of the 80 held-out windows; held-out loss before -> after; nDCG@10 ours / first stage /
teacher). At 450 steps (configs/sft_synthetic.yaml now), with the loss on the response window:
  task seed 0, model seed 0: 100%,  6.28 -> 0.36, 0.643 / 0.649 / 0.756 (identity answers 80%)
  task seed 0, model seed 1: 97.5%, 6.24 -> 0.36, 0.650 / 0.649 / 0.756 (identity 95%)
At 300 steps, NOT reliable over seeds (before the response-window change, except the last line):
  task seed 0, model seed 0: 100%,  6.28 -> 0.41, 0.649 / 0.649 / 0.756
  task seed 1, model seed 0: 96%,   6.21 -> 0.39, 0.591 / 0.608 / 0.758
  task seed 2, model seed 0: 100%,  6.26 -> 0.37, 0.648 / 0.644 / 0.768
  task seed 3, model seed 0: 87.5%, 6.19 -> 0.38, 0.607 / 0.635 / 0.785   (fails the 95% bar)
  task seed 0, model seed 1: 91%,   6.21 -> 0.39, 0.631 / 0.649 / 0.756   (fails; think exact in 10% of windows)
  task seed 0, model seed 0, response-window loss: 95% (at the bar), 6.28 -> 0.40
(`SFT_SYNTHETIC_TASK_SEED=t SFT_SYNTHETIC_MODEL_SEED=m python -m pytest tests/test_learning.py -q -s`; task seeds 1-3
by an experiment script with the same setting). The module takes about 4 minutes on 2 busy cores (train 205-220 s,
rerank 13 s)."""

import json
import time
from pathlib import Path

import pytest

from reasonrank_jax.cli import main

MAX_NEW_TOKENS = 160  # the teacher's responses are about 85 tokens (at most ~110)


def _heldout_losses(model_dirs, path, max_length):
    """Token-mean response loss of each checkpoint over an Alpaca file, computed as the trainer's held-out evaluator
    does (reasonrank_jax.training.sft.sft_loss_sums), in one padded batch."""
    import jax

    from reasonrank_jax.data.sft import read_sft_examples
    from reasonrank_jax.data.stream import sft_batch
    from reasonrank_jax.models import load_pretrained
    from reasonrank_jax.text import load_tokenizer
    from reasonrank_jax.training.sft import sft_loss_sums

    tokenizer = load_tokenizer(model_dirs[0])
    examples, _ = read_sft_examples(str(path), tokenizer, max_length)
    length = -(-max(len(e["input_ids"]) for e in examples) // 128) * 128
    batch = sft_batch(examples, length, tokenizer.pad_token_id)
    losses, loss_sums = [], None
    for model_dir in model_dirs:
        cfg, params = load_pretrained(model_dir)
        loss_sums = loss_sums or jax.jit(lambda p, b: sft_loss_sums(cfg, p, b))  # the same shapes: compiled once
        numerator, denominator = loss_sums(params, batch)
        losses.append(float(numerator) / float(denominator))
    return losses


def _ndcg10(run, qrels):
    from reasonrank_jax.eval.metrics import aggregate, evaluate

    return aggregate(evaluate(run, qrels, ["ndcg_cut.10"]), ["ndcg_cut.10"])["ndcg_cut_10"]


@pytest.fixture(scope="module")
def learned(sft_synthetic, tmp_path_factory):
    """What the tests read: the SFT run (the session fixture `sft_synthetic`, tests/conftest.py), the greedy rerank of
    the held-out queries by the exported model, the held-out losses before and after, nDCG, times."""
    import yaml

    from reasonrank_jax.data.synthetic import answer_is_valid_permutation, generate, reference_ndcg, think_text
    from reasonrank_jax.eval.trec import read_qrels, read_run

    task, files, exported = sft_synthetic["task"], sft_synthetic["files"], sft_synthetic["exported"]
    times = dict(sft_synthetic["times"])
    mark = time.perf_counter()
    reranked = tmp_path_factory.mktemp("learning") / "rerank"
    assert main(["rerank", "--model", str(exported), "--run", files["first_stage_heldout.trec"],
                 "--corpus", files["corpus.jsonl"], "--queries", files["queries.jsonl"], "--out", str(reranked),
                 "--window", str(task.window), "--step", str(task.step), "--top", str(task.passages_per_query),
                 "--mode", "rank_GPT_reasoning", "--max-passage-length", "32",
                 "--max-new-tokens", str(MAX_NEW_TOKENS), "--dtype", "float32"]) == 0
    times["rerank"] = time.perf_counter() - mark

    mark = time.perf_counter()
    config = yaml.safe_load(Path(sft_synthetic["config"]).read_text())
    max_length = config["data"]["max_length"]
    loss_before, loss_exported = _heldout_losses([sft_synthetic["base"], exported], files["sft_heldout.json"],
                                                 max_length)
    times["losses"] = time.perf_counter() - mark

    qrels = read_qrels(files["qrels.trec"])
    ours = read_run(reranked / "run.trec")
    heldout_qrels = {qid: qrels[qid] for qid in ours}
    metrics = sft_synthetic["metrics"]
    windows = [json.loads(line) for line in open(reranked / "windows.jsonl")]
    data = generate(task)

    def teacher_think(w):  # the teacher's transcript of the window the model saw
        query = data.query(w["qid"])
        return think_text(query.words, [query.passages[d] for d in w["passage_ids"]], task.think_style)

    times["total"] = sum(times.values())
    result = {
        "task": task, "metrics": metrics, "loss_before": loss_before, "loss_exported": loss_exported,
        "windows": windows,
        "rates": {"valid": sum(answer_is_valid_permutation(w["output"], len(w["passage_ids"])) for w in windows),
                  "identity": sum(w["permutation"] == list(range(len(w["passage_ids"]))) for w in windows),
                  "think_exact": sum(f"<think>{teacher_think(w)}</think>" in w["output"] for w in windows)},
        "ours": ours, "qrels": heldout_qrels, "steps": config["train"]["steps"],
        "ndcg": {"first_stage": _ndcg10(read_run(files["first_stage_heldout.trec"]), heldout_qrels),
                 "teacher": reference_ndcg(task, "heldout")["teacher"], "ours": _ndcg10(ours, heldout_qrels)},
        "times": {k: round(v, 1) for k, v in times.items()},
    }
    result["rates"] = {k: round(v / len(windows), 4) for k, v in result["rates"].items()}
    print(f"\nlearning: task seed {task.seed}, model seed {sft_synthetic['model_seed']}: held-out loss "
          f"{loss_before:.3f} -> {metrics[-1]['heldout_loss']:.3f}; windows {result['rates']}; nDCG@10 "
          f"{json.dumps({k: round(v, 4) for k, v in result['ndcg'].items()})}; times {result['times']}")
    return result


def test_sft_lowers_the_heldout_loss(learned):
    final = learned["metrics"][-1]
    assert final["step"] == learned["steps"] and "heldout_loss" in final
    # The untrained model is near uniform over the 512 ids (ln 512 = 6.24); the trained one is far below.
    assert learned["loss_before"] > 5.0
    assert final["heldout_loss"] < 0.25 * learned["loss_before"], (learned["loss_before"], final["heldout_loss"])
    # The trainer's held-out loss is the exported model's: the export holds the trained weights, and the loss before
    # training was computed the same way.
    assert abs(learned["loss_exported"] - final["heldout_loss"]) < 1e-3 * final["heldout_loss"] + 1e-4


def test_trained_model_answers_held_out_windows_with_valid_permutations(learned):
    from reasonrank_jax.data.synthetic import answer_is_valid_permutation

    windows = learned["windows"]
    task = learned["task"]
    assert len(windows) == len(learned["ours"]) * 4  # 20 candidates, windows of 8, step 4: 4 windows per query
    valid = [answer_is_valid_permutation(w["output"], len(w["passage_ids"])) for w in windows]
    assert all(len(w["passage_ids"]) == task.window for w in windows)
    rate = sum(valid) / len(valid)
    bad = [w["output"] for w, ok in zip(windows, valid) if not ok][:3]
    assert rate >= 0.95, (rate, bad)


def test_reports_ndcg_of_the_first_stage_the_teacher_and_the_reranked_run(learned, record_property):
    ndcg = learned["ndcg"]
    for name, value in ndcg.items():
        record_property(f"ndcg10_{name}", round(value, 4))
    for name, value in learned["rates"].items():
        record_property(f"windows_{name}", value)
    for name, value in learned["times"].items():
        record_property(f"seconds_{name}", value)
    # Reported, not asserted (see the module docstring); the reranked run is a complete run of the held-out queries.
    assert set(learned["ours"]) == set(learned["qrels"]) and len(learned["ours"]) == 20
    assert all(len(docs) == learned["task"].passages_per_query for docs in learned["ours"].values())
    assert all(0.0 <= v <= 1.0 for v in ndcg.values())
