"""Log-probabilities of the next tokens, computed from hidden states chunk by chunk.

A [batch, seq, vocab] logits tensor does not fit at ReasonRank's lengths (23,552 tokens x 152k vocabulary is 14 GB
in float32 per sequence), so the head is applied to `chunk` positions at a time under `jax.checkpoint`: the
backward pass recomputes each chunk's logits instead of keeping them. The values equal those of `forward`'s logits
(the same head, dtype and float32 cast).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from reasonrank_jax.models.config import ModelConfig
from reasonrank_jax.models.transformer import forward
from reasonrank_jax.sharding import along_batch


def head_kernel(cfg: ModelConfig, params):
    """[hidden, vocab]: the output projection (the embedding, transposed, when tied)."""
    if cfg.tie_word_embeddings:
        return params["embed"]["embedding"].T
    return params["lm_head"]["kernel"]


def _chunk_logprobs(x_bcd, kernel_dv, targets_bc, dtype, temperature):
    x_bcd = along_batch(x_bcd)  # the kernel is gathered, not the batch (sharding.along_batch)
    logits_bcv = along_batch(jnp.dot(x_bcd.astype(dtype), kernel_dv.astype(dtype)).astype(jnp.float32), "tensor")
    if temperature != 1.0:
        logits_bcv = logits_bcv / temperature
    logz_bc = jax.nn.logsumexp(logits_bcv, axis=-1)
    picked_bc = jnp.take_along_axis(logits_bcv, targets_bc[..., None], axis=-1)[..., 0]
    return picked_bc - logz_bc


def head_logprobs(cfg: ModelConfig, params, x_btd, targets_bt, chunk: int = 1024, temperature: float = 1.0):
    """[batch, t]: log softmax(head(x[:, i]) / temperature)[targets[:, i]], `chunk` positions at a time."""
    b, t, d = x_btd.shape
    chunk = max(min(chunk, t), 1)
    pad = -t % chunk
    x_btd = jnp.pad(x_btd, ((0, 0), (0, pad), (0, 0)))
    targets_bt = jnp.pad(targets_bt, ((0, 0), (0, pad)))
    n = (t + pad) // chunk
    xs_nbcd = x_btd.reshape(b, n, chunk, d).transpose(1, 0, 2, 3)
    targets_nbc = targets_bt.reshape(b, n, chunk).transpose(1, 0, 2)
    kernel_dv = head_kernel(cfg, params)
    one = jax.checkpoint(lambda x, y: _chunk_logprobs(x, kernel_dv, y, jnp.dtype(cfg.dtype), float(temperature)))
    logprobs_nbc = jax.lax.map(lambda xy: one(*xy), (xs_nbcd, targets_nbc))
    return logprobs_nbc.transpose(1, 0, 2).reshape(b, n * chunk)[:, :t]


def next_token_logprobs(cfg: ModelConfig, params, input_ids_bt, attention_mask_bt, chunk: int = 1024):
    """[batch, seq]: position t holds log p(input_ids[t] | input_ids[:t]); position 0 holds 0."""
    hidden_btd = forward(cfg, params, input_ids_bt, attention_mask_bt, return_hidden=True)
    if hidden_btd.shape[1] < 2:
        return jnp.zeros(input_ids_bt.shape, jnp.float32)
    logprobs_bt = head_logprobs(cfg, params, hidden_btd[:, :-1], input_ids_bt[:, 1:], chunk)
    return jnp.pad(logprobs_bt, ((0, 0), (1, 0)))


def window_logprobs(cfg: ModelConfig, params, input_ids_bt, attention_mask_bt, start_b, width: int,
                    chunk: int = 1024):
    """[batch, width]: position j of row i holds log p(input_ids[i, s + 1 + j] | input_ids[i, :s + 1 + j]) for
    s = start_b[i], i.e. the hidden states s .. s + width - 1 of each row gathered into a [batch, width] window, the
    head run there only. Windows that run past the row repeat its last prediction (mask those positions out). The
    values equal those of `next_token_logprobs` at positions s + 1 .. s + width (the same head, dtype and cast)."""
    hidden_btd = forward(cfg, params, input_ids_bt, attention_mask_bt, return_hidden=True)
    t = input_ids_bt.shape[1]
    if t < 2:
        return jnp.zeros((input_ids_bt.shape[0], width), jnp.float32)
    pos_bw = jnp.clip(start_b[:, None].astype(jnp.int32) + jnp.arange(width, dtype=jnp.int32), 0, t - 2)
    x_bwd = jnp.take_along_axis(hidden_btd, pos_bw[..., None], axis=1)
    targets_bw = jnp.take_along_axis(input_ids_bt, pos_bw + 1, axis=1)
    return head_logprobs(cfg, params, x_bwd, targets_bw, chunk)


def response_logprobs(cfg: ModelConfig, params, input_ids_bt, attention_mask_bt, response_len: int,
                      chunk: int = 1024, temperature: float = 1.0):
    """[batch, response_len]: log-probs of the last `response_len` tokens of each row ([prompt | response] rows,
    prompts left-padded), under softmax(logits / temperature). The head runs on those positions only."""
    hidden_btd = forward(cfg, params, input_ids_bt, attention_mask_bt, return_hidden=True)
    t = input_ids_bt.shape[1]
    x_brd = hidden_btd[:, t - response_len - 1: t - 1]
    return head_logprobs(cfg, params, x_brd, input_ids_bt[:, t - response_len:], chunk, temperature)
