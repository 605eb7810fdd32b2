"""Inference: sampling, the jitted KV-cache decoder, the continuous-batching engine and the sliding-window reranker."""

from reasonrank_jax.inference.decode import generate
from reasonrank_jax.inference.windows import sliding_windows
from reasonrank_jax.inference.sampling import SamplingParams

__all__ = ["generate", "sliding_windows", "SamplingParams"]
