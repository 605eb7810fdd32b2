"""A tiny Qwen2 from scratch for the demo: random weights, saved as a Hugging Face checkpoint with a tokenizer."""

from __future__ import annotations

import json
import os


def scratch_hf_config(vocab_size: int, model, eos_id: int, pad_id: int, bos_id: int) -> dict:
    """config.json of a Qwen2 with the sizes of ``model`` (pipeline ModelSection) and the tokenizer's ids."""
    return {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": vocab_size,
            "hidden_size": model.hidden_size, "intermediate_size": model.intermediate_size,
            "num_hidden_layers": model.num_layers, "num_attention_heads": model.num_heads,
            "num_key_value_heads": model.num_kv_heads, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
            "bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id}


def build_from_scratch(out_dir: str, tokenizer_dir: str, model, seed: int) -> dict:
    """Write a randomly initialised Qwen2 (``model``: sizes) with the tokenizer of ``tokenizer_dir`` into
    ``out_dir``. Weights as transformers initialises them: N(0, 0.02) matrices and embeddings, zero biases, unit
    norms, drawn from ``seed``. Returns {"path", "params"}."""
    import jax
    import numpy as np

    from reasonrank_jax.models import ModelConfig, init_params, save_pretrained
    from reasonrank_jax.text import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    vocab = -(-len(tokenizer) // 64) * 64  # padded to a multiple of 64, as real checkpoints pad theirs
    hf = scratch_hf_config(vocab, model, tokenizer.eos_token_id, tokenizer.pad_token_id,
                           tokenizer.convert_tokens_to_ids("<|im_start|>") if "<|im_start|>" in tokenizer.get_vocab()
                           else tokenizer.eos_token_id)
    cfg = ModelConfig.from_hf_dict(hf)
    shapes = jax.eval_shape(lambda: init_params(cfg))
    rng = np.random.default_rng([seed, 7])

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "norm" in name or "scale" in name:
            return np.ones(leaf.shape, np.float32)
        if "bias" in name:
            return np.zeros(leaf.shape, np.float32)
        return (0.02 * rng.standard_normal(leaf.shape)).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(draw, shapes)
    save_pretrained(cfg, params, out_dir, tokenizer_dir=tokenizer_dir)
    with open(os.path.join(out_dir, "config.json"), encoding="utf-8") as f:
        json.load(f)  # written and readable
    return {"path": out_dir, "params": int(sum(np.size(x) for x in jax.tree.leaves(params)))}
