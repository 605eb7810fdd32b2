"""Text side of the protocol: tokenizers, ReasonRank prompts, answer parsing and permutations."""

from reasonrank_jax.text.parsing import (apply_permutation, format_ranking, parse_permutation,
                                         parse_permutation_with_status)
from reasonrank_jax.text.prompts import (MODES, SAMPLING_DEFAULTS, build_messages, build_prompt, passage_content,
                                         render_messages)
from reasonrank_jax.text.tokenizer import build_qwen2_tokenizer, eos_token_ids, load_tokenizer

__all__ = ["apply_permutation", "format_ranking", "parse_permutation", "parse_permutation_with_status", "MODES",
           "SAMPLING_DEFAULTS", "build_messages", "build_prompt", "passage_content", "render_messages",
           "build_qwen2_tokenizer", "eos_token_ids", "load_tokenizer"]
