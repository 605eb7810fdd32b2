"""reasonrank-jax: JAX/Flax reimplementation of the ReasonRank listwise passage reranker."""

__version__ = "0.1.0"
