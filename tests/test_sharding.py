"""Partition rules on a (1, 4, 2) mesh: no weight matrix of the stacked layout, the decode layout or a LoRA factor is
replicated, specific paths get the intended specs, and decoding with sharded weights equals decoding without."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from reasonrank_jax.inference import generate
from reasonrank_jax.models import ModelConfig, decode_params, forward_cached, init_cache, init_params
from reasonrank_jax.sharding import make_mesh, params_shardings, partition_spec, shard_params

LORA_RANK = 8
LAYOUTS = {"stacked": lambda params: params, "decode": decode_params}


def _config(model_type: str) -> ModelConfig:
    return ModelConfig(model_type=model_type, vocab_size=256, hidden_size=64, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=16, intermediate_size=128, qkv_bias=model_type == "qwen2",
                       qk_norm=model_type == "qwen3", rope_theta=1e6)


@pytest.fixture(scope="module")
def mesh():
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 virtual devices")
    return make_mesh((1, 4, 2))


@pytest.fixture(scope="module", params=["qwen2", "qwen3", "llama"])
def cfg(request):
    return _config(request.param)


def _flat(tree) -> dict:
    return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _layout_shapes(cfg, layout):
    return jax.eval_shape(lambda: LAYOUTS[layout](init_params(cfg)))


def _matrices(flat: dict, layout: str) -> dict:
    """The weight matrices: leaves with ndim >= 2 not counting the stacked layer axis (so not the stacked norms)."""
    def layer_axes(path):
        return int(layout == "stacked" and path.startswith("layers/"))

    return {path: leaf for path, leaf in flat.items() if leaf.ndim - layer_axes(path) >= 2}


def _lora_factors(flat: dict) -> dict:
    """lora_a [..., in, rank] and lora_b [..., rank, out] beside every layer kernel (the module's LoRA convention)."""
    factors = {}
    for path, leaf in flat.items():
        if path.startswith("layers/") and path.endswith("/kernel"):
            *lead, n_in, n_out = leaf.shape
            base = path.removesuffix("/kernel")
            factors[f"{base}/lora_a"] = jax.ShapeDtypeStruct((*lead, n_in, LORA_RANK), leaf.dtype)
            factors[f"{base}/lora_b"] = jax.ShapeDtypeStruct((*lead, LORA_RANK, n_out), leaf.dtype)
    return factors


@pytest.mark.parametrize("layout, expected_count", [("stacked", 9), ("decode", 10)])
def test_every_weight_matrix_is_split_over_fsdp_and_tensor(mesh, cfg, layout, expected_count):
    shapes = _layout_shapes(cfg, layout)
    shardings = _flat(params_shardings(mesh, shapes))
    matrices = _matrices(_flat(shapes), layout)
    # stacked: embed, lm_head, q, k, v, o, gate, up, down; decode: embed, lm_head, 2 x (qkv, o, gate_up, down)
    assert len(matrices) == expected_count
    for path in matrices:
        assert not shardings[path].is_fully_replicated, path
        assert {axis for axis in shardings[path].spec if axis} == {"fsdp", "tensor"}, path


@pytest.mark.parametrize("layout", LAYOUTS)
def test_lora_factors_are_split_like_their_base_kernel(mesh, cfg, layout):
    flat = _flat(_layout_shapes(cfg, layout))
    factors = _lora_factors(flat)
    if layout == "stacked":
        targets = {path.split("/")[2] for path in factors}
        assert targets == {f"{name}_proj" for name in ("q", "k", "v", "o", "gate", "up", "down")}
    for path, factor in factors.items():
        base = path.rsplit("/", 1)[0]
        *lead, in_axis, out_axis = partition_spec(mesh, f"{base}/kernel", flat[f"{base}/kernel"].shape)
        spec = partition_spec(mesh, path, factor.shape)
        expected = (*lead, in_axis, None) if path.endswith("lora_a") else (*lead, None, out_axis)
        assert spec == P(*expected), path
        assert any(spec), f"{path} is replicated"


def test_specific_specs(mesh):
    flat = _flat(_layout_shapes(_config("qwen2"), "stacked")) | _flat(_layout_shapes(_config("qwen2"), "decode"))
    lora = _lora_factors(flat)
    specs = {path: partition_spec(mesh, path, leaf.shape) for path, leaf in (flat | lora).items()}
    assert specs["embed/embedding"] == P("tensor", "fsdp")
    assert specs["lm_head/kernel"] == P("fsdp", "tensor")
    assert specs["layers/attn/q_proj/kernel"] == P(None, "fsdp", "tensor")
    assert specs["layers/attn/q_proj/bias"] == P(None, "tensor")
    assert specs["layers/attn/o_proj/kernel"] == P(None, "tensor", "fsdp")
    assert specs["layers/0/attn/qkv_proj/kernel"] == P("fsdp", "tensor")
    assert specs["layers/1/attn/qkv_proj/bias"] == P("tensor")
    assert specs["layers/1/mlp/gate_up_proj/kernel"] == P("fsdp", "tensor")
    assert specs["layers/0/mlp/down_proj/kernel"] == P("tensor", "fsdp")
    assert specs["layers/attn/o_proj/lora_a"] == P(None, "tensor", None)
    assert specs["layers/mlp/gate_proj/lora_b"] == P(None, None, "tensor")
    assert specs["layers/0/attn/qkv_proj/lora_a"] == P("fsdp", None)
    assert not any(specs["layers/input_norm/scale"]) and not any(specs["layers/0/post_attn_norm/scale"])


def test_an_axis_that_does_not_divide_a_dimension_is_dropped(mesh):
    assert partition_spec(mesh, "embed/embedding", (255, 64)) == P(None, "fsdp")
    assert partition_spec(mesh, "layers/0/attn/qkv_proj/kernel", (62, 128)) == P(None, "tensor")
    assert partition_spec(mesh, "layers/mlp/down_proj/lora_b", (2, LORA_RANK, 6)) == P(None, None, None)


def _prefill_logits(cfg, params, ids):
    b, t = ids.shape
    cache = init_cache(cfg, b, 2 * t)
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    kv_mask = jnp.concatenate([jnp.ones((b, t), jnp.int32), jnp.zeros((b, t), jnp.int32)], axis=1)
    step = jax.jit(functools.partial(forward_cached, cfg), static_argnames="last_only")
    logits, _ = step(params, ids, positions, cache, jnp.zeros(b, jnp.int32), kv_mask)
    return np.asarray(logits)


def _random_decode_params(cfg):
    """Random decode-layout weights drawn on the host (no init program to compile), large enough that greedy
    continuations vary."""
    rng = np.random.default_rng(1)

    def draw(path, leaf):
        offset = 1.0 if jax.tree_util.keystr(path).endswith("'scale']") else 0.0
        return jnp.asarray(offset + 0.12 * rng.standard_normal(leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, _layout_shapes(cfg, "decode"))


def test_sharded_decode_layout_gives_the_same_prefill_logits(mesh, cfg):
    params = _random_decode_params(cfg)
    sharded = shard_params(mesh, params)
    qkv = sharded["layers"][0]["attn"]["qkv_proj"]["kernel"]
    assert qkv.sharding.spec == P("fsdp", "tensor") and qkv.addressable_shards[0].data.shape == (16, 64)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (4, 7)), jnp.int32)
    np.testing.assert_allclose(_prefill_logits(cfg, sharded, ids), _prefill_logits(cfg, params, ids), atol=1e-5)


def test_generate_with_sharded_decode_weights_equals_unsharded(mesh):
    """A rollout engine's path: decode-layout weights split over the mesh, the batch over its data axes (one model
    type: the per-type differences are already covered by the prefill test, and each generate compiles for seconds)."""
    cfg = _config("qwen2")
    params = _random_decode_params(cfg)
    prompts = [np.random.default_rng(n).integers(0, cfg.vocab_size, n).tolist() for n in (7, 3, 5, 1)]
    expected = generate(cfg, params, prompts, 6, [])
    assert len({tuple(tokens) for tokens in expected}) > 1  # not a degenerate model
    assert generate(cfg, shard_params(mesh, params), prompts, 6, [], mesh=mesh) == expected


def _step_temp_bytes(model_dir: str, devices: int) -> int:
    """Per-device temporaries of the compiled SFT step at one sequence per device on `devices` devices."""
    from types import SimpleNamespace as section

    from reasonrank_jax.scale.plan import build_program

    config = section(model=section(path=model_dir, param_dtype="float32", dtype="float32", remat="full"),
                     optim=section(lr=1e-5, schedule="constant", warmup_ratio=0.0, weight_decay=0.0, clip_norm=1.0,
                                   b1=0.9, b2=0.999, eps=1e-8),
                     lora=section(rank=0, alpha=1.0, targets=()),
                     train=section(micro_batch=devices, global_batch=devices, logits_chunk=256),
                     data=section(max_length=256))
    mesh = make_mesh((1, devices, 1), jax.devices()[:devices])
    program = build_program("sft", "sft", config, mesh, response_tokens=255)
    return program.jitted.lower(*program.args).compile().memory_analysis().temp_size_in_bytes


_UNPINNED = """
import sys
from reasonrank_jax import sharding
sharding.along_batch = lambda x, last=None: x  # before the model and loss modules import it
sys.path.insert(0, {tests!r})
from test_sharding import _step_temp_bytes
print(_step_temp_bytes({model!r}, 2), _step_temp_bytes({model!r}, 8))
"""


def test_training_step_keeps_the_batch_split_so_per_device_memory_does_not_grow_with_devices(tmp_path):
    """At one sequence per device, the SFT step's temporaries must not grow with the number of devices. Without the
    batch pins (sharding.along_batch, in the layers and the head) XLA gathers the whole global batch onto every
    device where activations meet fsdp-split kernels: shown by a fresh process with the pins switched off."""
    import subprocess
    import sys

    from transformers import Qwen2Config

    Qwen2Config(vocab_size=32768, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2, tie_word_embeddings=False).save_pretrained(tmp_path)
    two, eight = _step_temp_bytes(str(tmp_path), 2), _step_temp_bytes(str(tmp_path), 8)
    assert eight < 1.3 * two, (two, eight)

    tests = os.path.dirname(os.path.abspath(__file__))
    unpinned = subprocess.run([sys.executable, "-c", _UNPINNED.format(tests=tests, model=str(tmp_path))],
                              capture_output=True, text=True, timeout=600,
                              env={**os.environ, "PYTHONPATH": os.path.dirname(tests)})
    assert unpinned.returncode == 0, unpinned.stderr[-2000:]
    two_unpinned, eight_unpinned = map(int, unpinned.stdout.split())
    assert eight_unpinned > 2 * two_unpinned, (two_unpinned, eight_unpinned)  # the failure this test guards against
