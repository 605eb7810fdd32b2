"""Logits parity with transformers, checkpoint import/export both ways, sharding, KV cache, bad checkpoints."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

from reasonrank_jax.errors import InputError
from reasonrank_jax.models import (ModelConfig, forward, forward_cached, init_cache, load_pretrained,
                                   positions_from_mask, save_pretrained)

VOCAB = 160
SMALL = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512)
HF_CONFIGS = {
    "qwen2_tied": lambda: Qwen2Config(**SMALL, tie_word_embeddings=True, rope_theta=1e6),
    "qwen2_untied": lambda: Qwen2Config(**SMALL, tie_word_embeddings=False, rope_theta=1e6),
    "qwen3": lambda: Qwen3Config(**SMALL, head_dim=24, tie_word_embeddings=False, rope_theta=1e6),
    "llama3_rope": lambda: LlamaConfig(**SMALL, rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}),
}


def _random_hf_model(hf_config, seed):
    """A transformers model whose every tensor (norm weights and biases included) is random, not its init."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config).eval()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("norm.weight"):
                tensor.copy_(1.0 + 0.2 * torch.randn_like(tensor))
            else:
                tensor.copy_(0.15 * torch.randn_like(tensor))
    return model


@pytest.fixture(scope="module", params=list(HF_CONFIGS))
def hf_checkpoint(request, tmp_path_factory):
    model = _random_hf_model(HF_CONFIGS[request.param](), seed=len(request.param))
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return request.param, model, str(path)


def _ragged_batch(seed=0, batch=3, length=11):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (batch, length))
    mask = np.ones_like(ids)
    for row, pad in enumerate([0, 4, 7][:batch]):  # left padding
        mask[row, :pad] = 0
        ids[row, :pad] = 0
    return ids, mask


def _hf_logits(model, ids, mask):
    with torch.no_grad():
        return model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.float().numpy()


def test_fp32_logits_parity_with_left_padding(hf_checkpoint):
    name, model, path = hf_checkpoint
    cfg, params = load_pretrained(path, dtype="float32")
    ids, mask = _ragged_batch()
    ours = np.asarray(forward(cfg, params, ids, mask))
    reference = _hf_logits(model, ids, mask)
    assert ours.shape == (3, 11, VOCAB)
    error = np.abs(ours - reference)[mask.astype(bool)].max()
    assert error <= 1e-4, f"{name}: max |diff| {error}"


def test_forward_under_jit_and_config_round_trip(hf_checkpoint):
    _, _, path = hf_checkpoint
    cfg, params = load_pretrained(path)
    ids, mask = _ragged_batch(seed=1)
    jitted = jax.jit(forward, static_argnums=0)(cfg, params, jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(forward(cfg, params, ids, mask)), atol=1e-5)
    assert ModelConfig.from_hf_dict(cfg.to_hf_dict()) == cfg.replace(param_dtype="float32", dtype="float32")


def test_export_round_trip_loads_in_transformers(hf_checkpoint, tmp_path):
    name, model, path = hf_checkpoint
    cfg, params = load_pretrained(path)
    files = save_pretrained(cfg, params, tmp_path / "export", max_shard_size="40KB", tokenizer_dir=None)
    export = tmp_path / "export"
    assert len(files) > 1
    index = json.loads((export / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(files)
    assert index["metadata"]["total_size"] == sum(
        v.numel() * 4 for k, v in model.state_dict().items() if not (cfg.tie_word_embeddings and k == "lm_head.weight"))
    for shard in files:  # no shard over the limit unless it holds a single tensor that is itself larger
        from safetensors import safe_open
        with safe_open(export / shard, framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
            if len(list(f.keys())) > 1:
                assert os.path.getsize(export / shard) <= 40_000 + 4096
    hf_config = json.loads((export / "config.json").read_text())
    assert hf_config["architectures"][0].endswith("ForCausalLM") and hf_config["torch_dtype"] == "float32"
    assert (export / "generation_config.json").exists()

    reloaded = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    ids, mask = _ragged_batch(seed=2)
    error = np.abs(_hf_logits(reloaded, ids, mask) - _hf_logits(model, ids, mask))[mask.astype(bool)].max()
    assert error <= 1e-4, f"{name}: {error}"
    # and back into reasonrank-jax, bit for bit
    cfg2, params2 = load_pretrained(export)
    assert cfg2 == cfg
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, params2)


def test_single_file_export_and_bf16(tmp_path):
    model = _random_hf_model(HF_CONFIGS["qwen2_untied"](), seed=5)
    model.save_pretrained(tmp_path / "src")
    cfg, params = load_pretrained(tmp_path / "src", dtype="bfloat16")
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree_util.tree_leaves(params))
    assert save_pretrained(cfg, params, tmp_path / "bf16") == ["model.safetensors"]
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
    for name, tensor in reloaded.state_dict().items():
        assert tensor.dtype == torch.bfloat16
        expected = model.state_dict()[name].to(torch.bfloat16)
        assert torch.equal(tensor, expected), name
    ids, mask = _ragged_batch(seed=3)
    bf16_logits = np.asarray(forward(cfg, params, ids, mask))
    reference = _hf_logits(model, ids, mask)
    scale = np.abs(reference).max()
    assert np.abs(bf16_logits - reference)[mask.astype(bool)].max() < 0.1 * scale


def test_load_bf16_checkpoint_and_transformers_sharded_checkpoint(tmp_path):
    model = _random_hf_model(HF_CONFIGS["qwen3"](), seed=6).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "hf", max_shard_size="50KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    cfg, params = load_pretrained(tmp_path / "hf", dtype="float32")
    q0 = np.asarray(params["layers"]["attn"]["q_proj"]["kernel"][1])
    expected = model.model.layers[1].self_attn.q_proj.weight.detach().float().numpy().T
    np.testing.assert_array_equal(q0, expected)


def test_cached_prefill_and_decode_match_full_forward(hf_checkpoint):
    _, _, path = hf_checkpoint
    cfg, params = load_pretrained(path)
    ids, mask = _ragged_batch(seed=4, length=12)
    full = np.asarray(forward(cfg, params, ids, mask))
    prompt_len, max_len = 8, 16
    cache = init_cache(cfg, batch=3, max_len=max_len)
    kv_mask = np.zeros((3, max_len), np.int32)
    kv_mask[:, :prompt_len] = mask[:, :prompt_len]
    positions = positions_from_mask(jnp.asarray(mask))
    step = jax.jit(forward_cached, static_argnums=0, static_argnames="last_only", donate_argnums=4)
    logits, cache = step(cfg, params, jnp.asarray(ids[:, :prompt_len]), positions[:, :prompt_len], cache,
                         jnp.zeros(3, jnp.int32), jnp.asarray(kv_mask))
    real = mask[:, :prompt_len].astype(bool)
    assert np.abs(np.asarray(logits) - full[:, :prompt_len])[real].max() <= 1e-4
    for t in range(prompt_len, 12):  # one token at a time through the same code path
        kv_mask[:, t] = 1
        logits, cache = step(cfg, params, jnp.asarray(ids[:, t:t + 1]), positions[:, t:t + 1], cache,
                             jnp.full(3, t, jnp.int32), jnp.asarray(kv_mask), last_only=True)
        assert np.abs(np.asarray(logits[:, 0]) - full[:, t]).max() <= 1e-4


@pytest.mark.parametrize("query_block,key_block", [(16, 16), (16, 32), (8, 64)])
def test_blocked_prefill_matches_transformers(hf_checkpoint, monkeypatch, query_block, key_block):
    """Long prompts take the blockwise online-softmax path; shrink the blocks so a 48-token ragged prompt spans
    several query and key blocks (with a key tail past the prompt), and compare every real position with
    transformers. Rows start writing at different slots, so some query blocks see keys the others do not."""
    from reasonrank_jax.models import transformer

    monkeypatch.setattr(transformer, "QUERY_BLOCK", query_block)
    monkeypatch.setattr(transformer, "KEY_BLOCK", key_block)
    _, model, path = hf_checkpoint
    cfg, params = load_pretrained(path)
    ids, mask = _ragged_batch(seed=12, length=48)
    mask[2, :30] = 0  # a row that is mostly padding
    ids[2, :30] = 0
    expected = _hf_logits(model, ids, mask)
    for start in (0, 16):  # write at slot 0, or after 16 empty slots (kv_mask 0 there)
        max_len = start + 64
        kv_mask = np.zeros((3, max_len), np.int32)
        kv_mask[:, start:start + 48] = mask
        positions = positions_from_mask(jnp.asarray(mask))
        logits, _ = forward_cached(cfg, params, jnp.asarray(ids), positions, init_cache(cfg, 3, max_len),
                                   jnp.full(3, start, jnp.int32), jnp.asarray(kv_mask))
        real = mask.astype(bool)
        assert np.isfinite(np.asarray(logits)).all()
        assert np.abs(np.asarray(logits) - expected)[real].max() <= 1e-4


def test_rows_with_different_write_positions(hf_checkpoint):
    """Continuous batching: each row writes at its own cache slot (right-padded prefill, then ragged decode)."""
    _, _, path = hf_checkpoint
    cfg, params = load_pretrained(path)
    rng = np.random.default_rng(7)
    seqs = [rng.integers(0, VOCAB, n) for n in (5, 9)]
    ids = np.zeros((2, 9), np.int32)
    kv_mask = np.zeros((2, 12), np.int32)
    for row, seq in enumerate(seqs):
        ids[row, :len(seq)] = seq
        kv_mask[row, :len(seq)] = 1
    positions = np.tile(np.arange(9), (2, 1))
    cache = init_cache(cfg, batch=2, max_len=12)
    _, cache = forward_cached(cfg, params, jnp.asarray(ids), jnp.asarray(positions), cache,
                              jnp.zeros(2, jnp.int32), jnp.asarray(kv_mask))
    nxt = np.array([[3], [4]])
    write = np.array([len(seqs[0]), len(seqs[1])])  # row 0 overwrites its first pad slot
    kv_mask[0, write[0]] = kv_mask[1, write[1]] = 1
    logits, _ = forward_cached(cfg, params, jnp.asarray(nxt), jnp.asarray(write[:, None]), cache,
                               jnp.asarray(write), jnp.asarray(kv_mask))
    for row, seq in enumerate(seqs):
        full = np.asarray(forward(cfg, params, np.concatenate([seq, nxt[row]])[None]))
        assert np.abs(np.asarray(logits[row, 0]) - full[0, -1]).max() <= 1e-4


def test_packed_segments_equal_separate_sequences(hf_checkpoint):
    _, _, path = hf_checkpoint
    cfg, params = load_pretrained(path)
    rng = np.random.default_rng(8)
    a, b = rng.integers(0, VOCAB, 5), rng.integers(0, VOCAB, 4)
    packed = np.concatenate([a, b, [0, 0]])[None]
    segments = np.array([[1] * 5 + [2] * 4 + [0, 0]])
    out = np.asarray(forward(cfg, params, packed, segment_ids=segments))
    np.testing.assert_allclose(out[0, :5], np.asarray(forward(cfg, params, a[None]))[0], atol=1e-4)
    np.testing.assert_allclose(out[0, 5:9], np.asarray(forward(cfg, params, b[None]))[0], atol=1e-4)


def test_sharded_forward_on_2x2x2_mesh_equals_single_device(tmp_path):
    from jax.sharding import NamedSharding, PartitionSpec as P

    from reasonrank_jax.sharding import make_mesh

    if len(jax.devices()) < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
    model = _random_hf_model(HF_CONFIGS["qwen2_untied"](), seed=9)
    model.save_pretrained(tmp_path)
    cfg, params = load_pretrained(tmp_path)
    mesh = make_mesh((2, 2, 2))
    _, sharded = load_pretrained(tmp_path, mesh=mesh)
    q_kernel = sharded["layers"]["attn"]["q_proj"]["kernel"]
    assert q_kernel.sharding.spec == P(None, "fsdp", "tensor")
    assert len(q_kernel.addressable_shards) == 8 and q_kernel.addressable_shards[0].data.shape == (3, 32, 32)
    ids, mask = _ragged_batch(seed=10, batch=4)
    mask[3] = mask[1]
    batch_sharding = NamedSharding(mesh, P(("data", "fsdp"), None))
    ids_s, mask_s = jax.device_put(ids, batch_sharding), jax.device_put(mask, batch_sharding)
    out = jax.jit(forward, static_argnums=0)(cfg, sharded, ids_s, mask_s)
    single = forward(cfg, params, ids, mask)
    np.testing.assert_allclose(np.asarray(out), np.asarray(single), atol=1e-5)


# ---------------------------------------------------------------------------------------------- bad inputs

def test_unsupported_config_fails_loudly(tmp_path):
    cfg = Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=16, max_window_layers=0)
    with pytest.raises(InputError, match="sliding"):
        ModelConfig.from_hf_dict(cfg.to_dict())
    with pytest.raises(InputError, match="model_type"):
        ModelConfig.from_hf_dict({**Qwen2Config(**SMALL).to_dict(), "model_type": "gpt2"})
    with pytest.raises(InputError, match="yarn"):
        ModelConfig.from_hf_dict({**LlamaConfig(**SMALL).to_dict(), "rope_parameters": None,
                                  "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})


@pytest.fixture()
def small_checkpoint(tmp_path):
    model = _random_hf_model(HF_CONFIGS["qwen2_untied"](), seed=11)
    model.save_pretrained(tmp_path / "ok", max_shard_size="60KB")
    return tmp_path / "ok"


def test_missing_and_corrupt_files_name_the_file(small_checkpoint, tmp_path):
    (small_checkpoint / "config.json").rename(small_checkpoint / "config.bak")
    with pytest.raises(InputError, match="config.json"):
        load_pretrained(small_checkpoint)
    (small_checkpoint / "config.json").write_text("{not json")
    with pytest.raises(InputError, match=r"config.json.*not valid JSON"):
        load_pretrained(small_checkpoint)
    (small_checkpoint / "config.bak").rename(small_checkpoint / "config.json")
    shards = sorted(small_checkpoint.glob("model-*.safetensors"))
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: len(data) // 2])  # truncated shard
    with pytest.raises(InputError) as err:
        load_pretrained(small_checkpoint)
    assert shards[1].name in str(err.value) and "truncated" in str(err.value)
    shards[1].unlink()
    with pytest.raises(InputError, match=shards[1].name):
        load_pretrained(small_checkpoint)


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.run([sys.executable, "-m", "reasonrank_jax", *args], capture_output=True, text=True, env=env)


def test_model_info_cli(small_checkpoint):
    result = _cli("model-info", str(small_checkpoint), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    model = _random_hf_model(HF_CONFIGS["qwen2_untied"](), seed=11)
    assert info["num_params"] == sum(p.numel() for p in model.parameters())
    assert info["config"]["num_kv_heads"] == 2 and len(info["files"]) > 1
    (small_checkpoint / "config.json").write_text("{broken")
    result = _cli("model-info", str(small_checkpoint))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "config.json" in result.stderr
    assert "Traceback" not in result.stderr


def test_import_holds_at_most_one_stacked_parameter_on_the_host(tmp_path):
    """Tensor-by-tensor import: the host's peak numpy allocation stays far below the size of the weights."""
    import tracemalloc

    config = Qwen2Config(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=8,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    model = _random_hf_model(config, seed=12)
    model.save_pretrained(tmp_path, max_shard_size="200KB")
    total_bytes = sum(p.numel() for p in model.parameters()) * 4
    largest_stacked = 8 * 128 * 256 * 4  # one MLP kernel for all 8 layers
    tracemalloc.start()
    _, params = load_pretrained(tmp_path)
    retained, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # On the CPU backend a device buffer may alias its host array, so what `params` retains can show up as traced
    # host memory; the transient extra above it is what must stay small.
    # The transient is the stacked parameter being assembled plus the staging copy of device_put.
    assert peak - retained < 2.2 * largest_stacked < 0.5 * total_bytes, (peak, retained, largest_stacked, total_bytes)


def test_tied_export_has_no_lm_head_and_copies_tokenizer(tmp_path):
    model = _random_hf_model(HF_CONFIGS["qwen2_tied"](), seed=13)
    model.save_pretrained(tmp_path / "src")
    tokenizer_dir = tmp_path / "tok"
    tokenizer_dir.mkdir()
    (tokenizer_dir / "tokenizer.json").write_text("{}")
    (tokenizer_dir / "tokenizer_config.json").write_text("{}")
    cfg, params = load_pretrained(tmp_path / "src")
    assert "lm_head" not in params
    save_pretrained(cfg, params, tmp_path / "out", tokenizer_dir=tokenizer_dir)
    from safetensors import safe_open
    with safe_open(tmp_path / "out" / "model.safetensors", framework="pt") as f:
        names = set(f.keys())
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    assert (tmp_path / "out" / "tokenizer.json").exists() and (tmp_path / "out" / "tokenizer_config.json").exists()
    with pytest.raises(InputError, match="tokenizer"):
        save_pretrained(cfg, params, tmp_path / "out2", tokenizer_dir=tmp_path / "src" / "nothing")


def _tiny_cfg(**overrides):
    return ModelConfig(**{**dict(model_type="qwen3", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                                 num_kv_heads=2, head_dim=8, intermediate_size=48, qk_norm=True), **overrides})


def test_program_size_does_not_grow_with_depth():
    """Layers are scanned: the compiled program for 24 layers is the program for 2 with a longer loop."""
    from reasonrank_jax.models import init_params

    sizes = {}
    for layers in (2, 24):
        cfg = _tiny_cfg(num_layers=layers)
        params = jax.eval_shape(lambda cfg=cfg: init_params(cfg))
        ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
        sizes[layers] = len(jax.jit(forward, static_argnums=0).lower(cfg, params, ids, ids).as_text())
    assert abs(sizes[24] - sizes[2]) < 0.05 * sizes[2], sizes


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_policies_give_the_same_gradients(policy):
    from reasonrank_jax.models import init_params

    cfg = _tiny_cfg()
    params = init_params(cfg, jax.random.PRNGKey(1))
    ids = jax.random.randint(jax.random.PRNGKey(2), (2, 6), 0, cfg.vocab_size)

    def loss(p, c):
        return jnp.mean(jax.nn.log_softmax(forward(c, p, ids))[..., 0])

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    expected = grad(params, cfg)
    got = grad(params, cfg.replace(remat_policy=policy))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), expected, got)


def test_blockwise_attention_equals_full_attention_values_and_gradients():
    """Training attention over long sequences runs one query block at a time (rematerialised): same values and
    gradients as the whole [t, s] softmax, padding rows and the causal mask included."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from reasonrank_jax.models.transformer import attend, blockwise_attend

    rng = np.random.default_rng(0)
    b, k, g, t, e = 2, 2, 2, 2048, 8
    q = jnp.asarray(rng.normal(size=(b, k, g, t, e)), jnp.float32)
    keys = jnp.asarray(rng.normal(size=(b, k, e, t)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, k, t, e)), jnp.float32)
    valid = np.ones((b, t), bool)
    valid[1, 1500:] = False  # a padded row: its pad queries see nothing
    mask = jnp.asarray(np.tril(np.ones((t, t), bool))[None] & valid[:, None, :] & valid[:, :, None])
    np.testing.assert_allclose(blockwise_attend(q, keys, v, mask, 512), attend(q, keys, v, mask), atol=1e-6)

    def loss(fn):
        return lambda *a: (fn(*a) ** 2).sum()

    full = jax.grad(loss(lambda *a: attend(*a, mask)), (0, 1, 2))(q, keys, v)
    blocks = jax.grad(loss(lambda *a: blockwise_attend(*a, mask, 512)), (0, 1, 2))(q, keys, v)
    for a, c in zip(full, blocks):
        np.testing.assert_allclose(c, a, atol=1e-5 * float(np.abs(a).max()))
