"""Qwen2 / Qwen3 / Llama decoder in Flax linen, with Hugging Face safetensors import and export."""

from reasonrank_jax.models.config import ModelConfig
from reasonrank_jax.models.hf_io import checkpoint_summary, load_pretrained, save_pretrained
from reasonrank_jax.models.transformer import (decode_params, forward, forward_cached, init_cache, init_params,
                                               positions_from_mask)

__all__ = ["ModelConfig", "load_pretrained", "save_pretrained", "checkpoint_summary", "forward", "forward_cached",
           "decode_params", "init_cache", "init_params", "positions_from_mask"]
