"""`reasonrank-jax plan`: the real SFT and GRPO steps compiled by the TPU compiler for a small TPU slice, from this
CPU host. Runs `plan` in a subprocess with the compiler on its path (`.ci/run` installs libtpu into .tpu-compiler;
elsewhere set REASONRANK_TPU_COMPILER to a `pip install --target` directory holding libtpu); skipped without it,
except in CI."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPILER = os.environ.get("REASONRANK_TPU_COMPILER", os.path.join(REPO, ".tpu-compiler"))
HAVE_COMPILER = os.path.isdir(os.path.join(COMPILER, "libtpu"))

needs_compiler = pytest.mark.skipif(not HAVE_COMPILER and not os.environ.get("CI"),
                                    reason=f"no TPU compiler in {COMPILER} (pip install --no-deps --target "
                                           f"{COMPILER} libtpu)")

# A small Qwen2 shape: every sharded dimension divides 4 chips, so each chip holds exactly 1/4 of every matrix.
VOCAB, HIDDEN, INTER, LAYERS, HEADS, KV_HEADS = 4096, 256, 512, 2, 4, 2


def expected_params() -> int:
    """Parameter count of that shape, by hand: embeddings, head, per layer q/k/v (+ biases), o, MLP, two norms."""
    head_dim = HIDDEN // HEADS
    attention = HIDDEN * HEADS * head_dim + 2 * HIDDEN * KV_HEADS * head_dim \
        + HEADS * head_dim + 2 * KV_HEADS * head_dim + HEADS * head_dim * HIDDEN
    per_layer = attention + 3 * HIDDEN * INTER + 2 * HIDDEN
    return 2 * VOCAB * HIDDEN + LAYERS * per_layer + HIDDEN


def replicated_params() -> int:
    """The norms and biases (not split by the partition rules: every chip holds them whole)."""
    head_dim = HIDDEN // HEADS
    return LAYERS * (2 * HIDDEN + HEADS * head_dim + 2 * KV_HEADS * head_dim) + HIDDEN


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import Qwen2Config

    path = tmp_path_factory.mktemp("plan_model")
    Qwen2Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
                num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, tie_word_embeddings=False
                ).save_pretrained(path)  # config.json only: plan never reads weights
    assert not any(name.endswith(".safetensors") for name in os.listdir(path))
    return path


def write_yaml(path, text):
    path.write_text(text)
    return str(path)


def plan(*args, compiler=True):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}
    env["PYTHONPATH"] = os.pathsep.join(([COMPILER] if compiler else []) + [REPO])
    return subprocess.run([sys.executable, "-m", "reasonrank_jax", "plan", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def sft_yaml(tmp_path_factory, model_dir):
    root = tmp_path_factory.mktemp("plan_sft")
    return write_yaml(root / "sft.yaml", f"""
model: {{path: {model_dir}, dtype: bfloat16, param_dtype: float32}}
data: {{path: {root}/unused.json, max_length: 512}}
train: {{out: {root}/run, steps: 10, global_batch: 16, micro_batch: 8}}
""")


@needs_compiler
def test_sft_step_arguments_are_params_and_adam_state_per_chip(sft_yaml):
    """Full SFT, fp32 weights + AdamW: each of 4 chips holds a quarter of 3 x 4 bytes per parameter (weights, two
    moments; the norms whole), plus its quarter of the batch."""
    result = plan("--config", sft_yaml, "--topology", "v5p-8", "--json")
    assert result.returncode == 0, result.stderr
    fit = json.loads(result.stdout)
    assert fit["fits"] and fit["chips"] == 4 and fit["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    split = expected_params() - replicated_params()
    state = 12 * (split / 4 + replicated_params())
    batch = 2 * 8 * 512 * 4 * 2 / 4 + 2 * 8 * 4 / 4 + 2 * 8 * 511 * 4 / 4  # ids + mask, starts, loss window
    assert fit["argument"] == pytest.approx(state + batch, rel=0.01)
    assert fit["peak"] >= fit["argument"] and fit["peak"] <= fit["available"]
    assert fit["available"] == pytest.approx(95.74 * 2**30, rel=0.01)  # the compiler's HBM of a v5p chip
    # 6 x params x tokens, and the model count includes it
    tokens = 16 * 512
    assert fit["model_flops"] >= 6 * (expected_params() - VOCAB * HIDDEN) * tokens / 4 * 0.999
    assert fit["step_s"] >= fit["model_flops"] / 459e12 * 0.999


@needs_compiler
def test_grpo_update_lora_arguments(tmp_path, model_dir):
    """GRPO update under LoRA: the frozen base plus the adapters with their AdamW moments, per chip. (Rank 128: the
    TPU lays arrays out in tiles of 128 lanes, so a rank-8 adapter would take 16x its bytes.)"""
    rank = 128
    yaml_path = write_yaml(tmp_path / "grpo.yaml", f"""
model: {{path: {model_dir}, dtype: bfloat16, param_dtype: float32}}
data: {{path: {tmp_path}/unused.parquet}}
train: {{out: {tmp_path}/run, steps: 2, micro_batch: 8}}
lora: {{rank: {rank}, targets: [q, v]}}
grpo: {{prompts_per_step: 4, rollouts: 4, mini_batch: 2, max_prompt: 256, max_response: 128}}
""")
    result = plan("--config", yaml_path, "--topology", "v6e-4", "--json")
    assert result.returncode == 0, result.stderr
    fit = json.loads(result.stdout)
    assert fit["phase"] == "grpo-update" and fit["chips"] == 4
    head_dim = HIDDEN // HEADS
    # q: [d, h*e], v: [d, k*e]; lora_a [d, r] split like the kernel's input (fsdp), lora_b [r, out] like its output
    lora = LAYERS * (HIDDEN * rank / 4 + rank * HEADS * head_dim + HIDDEN * rank / 4 + rank * KV_HEADS * head_dim)
    base = 4 * ((expected_params() - replicated_params()) / 4 + replicated_params())
    rows, length, response = 2 * 4, 256 + 128, 128
    batch = (2 * rows * length * 4 + 4 * rows * response * 4 + rows * 4) / 4 + 1
    assert fit["argument"] == pytest.approx(base + 3 * 4 * lora + batch, rel=0.01)


@needs_compiler
def test_not_fitting_exits_3_and_search_batch_finds_one_that_fits(tmp_path, model_dir):
    """Long sequences with a large micro-batch overflow a v5e chip (15.75 GiB): exit 3 naming required and
    available; --search-batch returns a micro-batch that then fits."""
    yaml_path = write_yaml(tmp_path / "big.yaml", f"""
model: {{path: {model_dir}, dtype: float32, param_dtype: float32}}
data: {{path: {tmp_path}/unused.json, max_length: 8192}}
train: {{out: {tmp_path}/run, steps: 1, global_batch: 512, micro_batch: 512}}
""")
    too_big = plan("--config", yaml_path, "--topology", "v5e-4")
    assert too_big.returncode == 3, too_big.stderr
    last = too_big.stderr.strip().splitlines()[-1]
    assert "requires" in last and "available" in last and "15.75 GiB" in last

    searched = plan("--config", yaml_path, "--topology", "v5e-4", "--search-batch", "--json")
    assert searched.returncode == 0, searched.stderr
    found = json.loads(searched.stdout)
    assert found["fits"] and found["changes"][0].startswith("train.micro_batch=")
    micro = int(found["changes"][0].split("=")[1])
    assert 4 <= micro < 512 and micro % 4 == 0

    again = plan("--config", yaml_path, "--topology", "v5e-4", "--json", *found["changes"])
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["fits"]


def test_without_the_compiler_plan_says_how_to_get_it(sft_yaml):
    if HAVE_COMPILER and os.environ.get("PYTHONPATH", "").find(COMPILER) >= 0:
        pytest.skip("the compiler is on this process's path")
    try:
        import libtpu  # noqa: F401
        pytest.skip("libtpu is installed in this environment")
    except ImportError:
        pass
    result = plan("--config", sft_yaml, "--topology", "v5p-8", compiler=False)
    assert result.returncode == 2
    assert "reasonrank-jax[tpu]" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("name, chips, hosts, grid", [
    ("v5p-8", 4, 1, (2, 2, 1)), ("v5p-16", 8, 2, (2, 2, 2)), ("v5p-64", 32, 8, (2, 4, 4)),
    ("v5p-128", 64, 16, (4, 4, 4)), ("v4-32", 16, 4, (2, 2, 4)), ("v6e-8", 8, 1, (2, 4)),
    ("v6e-64", 64, 16, (8, 8)), ("v6e-256", 256, 64, (16, 16)), ("v5e-16", 16, 4, (4, 4)),
    ("v5litepod-4", 4, 1, (2, 2))])
def test_slice_names(name, chips, hosts, grid):
    """Cloud TPU naming: v4/v5p count TensorCores (2 per chip), v5e/v6e chips; 4 chips per host beyond one host."""
    from reasonrank_jax.scale.topology import parse_slice

    tpu = parse_slice(name)
    assert (tpu.chips, tpu.hosts, tpu.grid) == (chips, hosts, grid)


@pytest.mark.parametrize("name", ["v5p-6", "v5p-7", "v7-8", "v6e-3", "tpu", "v5p"])
def test_bad_slice_names(name):
    from reasonrank_jax.errors import InputError
    from reasonrank_jax.scale.topology import parse_slice

    with pytest.raises(InputError, match="--topology"):
        parse_slice(name)
