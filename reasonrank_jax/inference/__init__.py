"""Inference: sampling, the jitted KV-cache decoder, the continuous-batching engine and the sliding-window reranker.

Names are imported on first use (PEP 562), so that importing a command module does not import jax.
"""

import importlib

_EXPORTS = {
    "generate": "reasonrank_jax.inference.decode",
    "sliding_windows": "reasonrank_jax.inference.windows",
    "SamplingParams": "reasonrank_jax.inference.sampling",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
