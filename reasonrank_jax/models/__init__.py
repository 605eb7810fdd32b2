"""Qwen2 / Qwen3 / Llama decoder in Flax linen, with Hugging Face safetensors import and export.

Names are imported on first use (PEP 562), so that importing a command module does not import jax.
"""

from reasonrank_jax.lazy import lazy_getattr

_EXPORTS = {
    "ModelConfig": "reasonrank_jax.models.config",
    "load_pretrained": "reasonrank_jax.models.hf_io",
    "save_pretrained": "reasonrank_jax.models.hf_io",
    "checkpoint_summary": "reasonrank_jax.models.hf_io",
    "forward": "reasonrank_jax.models.transformer",
    "forward_cached": "reasonrank_jax.models.transformer",
    "decode_params": "reasonrank_jax.models.transformer",
    "init_cache": "reasonrank_jax.models.transformer",
    "init_params": "reasonrank_jax.models.transformer",
    "positions_from_mask": "reasonrank_jax.models.transformer",
}
__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
