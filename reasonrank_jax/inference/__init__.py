"""Inference: sampling, the jitted KV-cache decoder, the continuous-batching engine and the sliding-window reranker.

Names are imported on first use (PEP 562), so that importing a command module does not import jax.
"""

from reasonrank_jax.lazy import lazy_getattr

_EXPORTS = {
    "generate": "reasonrank_jax.inference.decode",
    "sliding_windows": "reasonrank_jax.inference.windows",
    "SamplingParams": "reasonrank_jax.inference.sampling",
}
__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
