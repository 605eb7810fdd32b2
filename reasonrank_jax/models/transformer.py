"""The decoder: Qwen2 / Qwen3 / Llama as pure linen modules, layers stacked and scanned.

Shapes: b batch, t query positions, s key positions (cache slots), d hidden, h query heads, k kv heads,
g = h / k query heads per kv head, e head dim, v vocab, l layers.

Parameters (a plain pytree, layer-stacked leaves lead with l):
  embed/embedding [v, d]
  layers/input_norm/scale [l, d]            layers/post_attn_norm/scale [l, d]
  layers/attn/{q,k,v}_proj/kernel [l, d, h*e | k*e] (+ bias when qkv_bias)
  layers/attn/{q,k}_norm/scale [l, e]       (Qwen3)
  layers/attn/o_proj/kernel [l, h*e, d]
  layers/mlp/{gate,up}_proj/kernel [l, d, f]   layers/mlp/down_proj/kernel [l, f, d]
  final_norm/scale [d]                       lm_head/kernel [d, v] (absent when embeddings are tied)

Two forward paths share the layer modules:
- `forward` (training, scoring) scans the layer-stacked weights: one compiled layer body, however deep the model.
- `forward_cached` (prefill, decode) unrolls the layers over per-layer weights and a per-layer KV cache. A scanned
  decode step slices every layer's weights and cache out of the stacked arrays, and XLA:CPU materialises those
  slices as copies each step (a third of a decode step on CPU); unrolled, each dot reads its operands in place.
  `decode_params` converts the weights once (also fusing q/k/v and gate/up into one dot each); stacked weights
  also work (then each call converts them).

The KV cache is an explicit pytree, a tuple with one {"k": [b, k, e, s], "v": [b, k, s, e]} per layer. Keys are
stored transposed (slots minor) so that the decode-time score dot q.K^T contracts over K's major axis, the layout
CPU matmul kernels read without repacking (7x faster than [s, e] on a 320-slot cache). `forward_cached` writes
the new tokens of row b at slots [write_pos_b[b], write_pos_b[b] + t) and returns the updated cache. Prefill and
one-token decode run through the same code path.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from reasonrank_jax.models.config import ModelConfig, rope_inv_freq
from reasonrank_jax.sharding import along_batch

_REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole layer
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class RMSNorm(nn.Module):
    eps: float
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        x_f32 = x.astype(jnp.float32)
        y = x_f32 * jax.lax.rsqrt(jnp.mean(x_f32 * x_f32, axis=-1, keepdims=True) + self.eps)
        return y.astype(self.dtype) * scale.astype(self.dtype)


def rope_cos_sin(cfg: ModelConfig, positions_bt):
    """cos, sin [b, t, 1, e] for rotate-half RoPE (the Hugging Face layout: frequencies repeated twice)."""
    inv_freq = jnp.asarray(rope_inv_freq(cfg), jnp.float32)
    angles_bte = positions_bt.astype(jnp.float32)[..., None] * inv_freq
    angles_bte = jnp.concatenate([angles_bte, angles_bte], axis=-1)
    return jnp.cos(angles_bte)[:, :, None, :], jnp.sin(angles_bte)[:, :, None, :]


def apply_rope(x_bthe, cos, sin):
    x1, x2 = jnp.split(x_bthe, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x_bthe.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x_bthe.dtype)


CACHE_SLOT_AXIS = {"k": 3, "v": 2}  # the slot axis of each per-layer cache array (k: [b, k, e, s], v: [b, k, s, e])


def map_cache(fn, *caches):
    """fn(array, ..., slot_axis) over matching arrays of one or more KV caches: a cache of the results."""
    return tuple({name: fn(*(layer[name] for layer in layers), CACHE_SLOT_AXIS[name]) for name in layers[0]}
                 for layers in zip(*caches, strict=True))


def _write_rows(cache_layer, new_k_btke, new_v_btke, write_pos_b):
    """cache[b, ..., write_pos_b[b] + i, ...] = new[b, i] for keys and values: in-place scatters of the new tokens.

    Slots past the end of the cache are dropped (scatter semantics), never clamped onto earlier slots.
    """
    b, t = new_k_btke.shape[:2]
    rows_bt = jnp.broadcast_to(jnp.arange(b)[:, None], (b, t))
    slots_bt = write_pos_b[:, None] + jnp.arange(t)[None, :]
    k_bkes, v_bkse = cache_layer["k"], cache_layer["v"]
    # Advanced indices split by slices: both indexed views are [b, t, k, e], matching the new rows.
    return {"k": k_bkes.at[rows_bt, :, :, slots_bt].set(new_k_btke.astype(k_bkes.dtype), mode="drop"),
            "v": v_bkse.at[rows_bt, :, slots_bt].set(new_v_btke.astype(v_bkse.dtype), mode="drop")}


def attend(q_bkgte, k_bkes, v_bkse, mask_bts):
    """softmax(q k^T / sqrt(e)) v over all s keys; a fully masked row (a pad query) averages v rather than NaN."""
    e = q_bkgte.shape[-1]
    scores_bkgts = jnp.einsum("bkgte,bkes->bkgts", q_bkgte, k_bkes, preferred_element_type=jnp.float32) / np.sqrt(e)
    scores_bkgts = jnp.where(mask_bts[:, None, None], scores_bkgts, jnp.finfo(jnp.float32).min)
    probs_bkgts = jax.nn.softmax(scores_bkgts, axis=-1).astype(v_bkse.dtype)
    return jnp.einsum("bkgts,bkse->bkgte", probs_bkgts, v_bkse)


TRAIN_QUERY_BLOCK = 512  # long sequences without a cache: attention one query block at a time (`blockwise_attend`)
BLOCKWISE_FROM = 2048


def blockwise_attend(q_bkgte, k_bkes, v_bkse, mask_bts, block: int):
    """`attend`, one block of `block` queries at a time, each block rematerialised in the backward pass: memory is
    one [b, h, block, s] score tile instead of [b, h, t, s] (at 23,552 tokens and 28 heads, 1.3 GB per sequence
    instead of 62 GB). Every query row's softmax still covers all its keys, so the values are those of `attend`."""
    b, k, g, t, e = q_bkgte.shape
    n = t // block
    q_nbkgqe = q_bkgte.reshape(b, k, g, n, block, e).transpose(3, 0, 1, 2, 4, 5)
    mask_nbqs = mask_bts.reshape(b, n, block, -1).transpose(1, 0, 2, 3)
    one_block = jax.checkpoint(lambda qm: attend(qm[0], k_bkes, v_bkse, qm[1]))
    out_nbkgqe = jax.lax.map(one_block, (q_nbkgqe, mask_nbqs))
    return out_nbkgqe.transpose(1, 2, 3, 0, 4, 5).reshape(b, k, g, t, e)


QUERY_BLOCK = 256  # prefill attention block sizes: a [b, h, 256, 512] score tile instead of [b, h, t, s]
KEY_BLOCK = 512


def _divisor_block(n: int, largest: int) -> int:
    block = largest
    while block >= 16 and n % block:
        block //= 2
    return block if block >= 16 else n


def cached_attention(q_bkgte, k_bkes, v_bkse, write_pos_b, kv_mask_bs):
    """Attention of t new queries (row b's query i sits at cache slot write_pos_b[b] + i) over the cache: slot j is
    visible iff kv_mask_bs[b, j] and j <= that slot.

    One query (decode) or a short prompt: a single masked softmax. A long prompt (prefill): blockwise with an
    online softmax, so memory is one [b, h, QUERY_BLOCK, KEY_BLOCK] tile rather than [b, h, t, s], and each query
    block stops at the last key block it can see (causal: about half the work of the full product).
    """
    b, k, g, t, e = q_bkgte.shape
    s = k_bkes.shape[-1]
    if t <= QUERY_BLOCK:
        query_slot_bt = write_pos_b[:, None] + jnp.arange(t)
        mask_bts = (jnp.arange(s) <= query_slot_bt[:, :, None]) & (kv_mask_bs[:, None, :] != 0)
        return attend(q_bkgte, k_bkes, v_bkse, mask_bts)
    cq, ck = _divisor_block(t, QUERY_BLOCK), _divisor_block(s, KEY_BLOCK)
    scale = 1.0 / np.sqrt(e)
    lowest = jnp.finfo(jnp.float32).min

    def query_block(qi, out_bkgte):
        q_bkgqe = jax.lax.dynamic_slice_in_dim(q_bkgte, qi * cq, cq, axis=3)
        query_slot_bq = write_pos_b[:, None] + qi * cq + jnp.arange(cq)
        num_key_blocks = jnp.minimum(jnp.max(query_slot_bq) // ck + 1, s // ck)

        def key_block(ki, carry):
            max_bkgq, denom_bkgq, acc_bkgqe = carry
            k_bkec = jax.lax.dynamic_slice_in_dim(k_bkes, ki * ck, ck, axis=3)
            v_bkce = jax.lax.dynamic_slice_in_dim(v_bkse, ki * ck, ck, axis=2)
            slot_c = ki * ck + jnp.arange(ck)
            valid_bc = jax.lax.dynamic_slice_in_dim(kv_mask_bs, ki * ck, ck, axis=1) != 0
            mask_bqc = (slot_c <= query_slot_bq[:, :, None]) & valid_bc[:, None, :]
            scores = jnp.einsum("bkgqe,bkec->bkgqc", q_bkgqe, k_bkec, preferred_element_type=jnp.float32) * scale
            scores = jnp.where(mask_bqc[:, None, None], scores, lowest)
            new_max = jnp.maximum(max_bkgq, jnp.max(scores, axis=-1))
            probs = jnp.where(mask_bqc[:, None, None], jnp.exp(scores - new_max[..., None]), 0.0)
            rescale = jnp.exp(max_bkgq - new_max)
            acc_bkgqe = acc_bkgqe * rescale[..., None] + jnp.einsum(
                "bkgqc,bkce->bkgqe", probs.astype(v_bkce.dtype), v_bkce, preferred_element_type=jnp.float32)
            return new_max, denom_bkgq * rescale + jnp.sum(probs, axis=-1), acc_bkgqe

        init = (jnp.full((b, k, g, cq), lowest), jnp.zeros((b, k, g, cq)), jnp.zeros((b, k, g, cq, e)))
        _, denom_bkgq, acc_bkgqe = jax.lax.fori_loop(0, num_key_blocks, key_block, init)
        block = acc_bkgqe / jnp.where(denom_bkgq == 0, 1.0, denom_bkgq)[..., None]  # a pad query: zeros
        return jax.lax.dynamic_update_slice_in_dim(out_bkgte, block.astype(out_bkgte.dtype), qi * cq, axis=3)

    return jax.lax.fori_loop(0, t // cq, query_block, jnp.zeros(q_bkgte.shape, v_bkse.dtype))


class Attention(nn.Module):
    """mask: [b, t, s] attention mask without a cache; with one, kv_mask [b, s] (see `cached_attention`).
    fused: q, k and v come from one [d, (h + 2k) e] projection "qkv_proj" (the decode layout, `decode_params`)."""

    cfg: ModelConfig
    fused: bool = False

    @nn.compact
    def __call__(self, x_btd, cos, sin, mask, cache, write_pos_b):
        cfg = self.cfg
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        dense = functools.partial(nn.Dense, dtype=dtype, param_dtype=param_dtype)
        b, t, _ = x_btd.shape
        h, k, e = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        if self.fused:
            qkv_btx = dense((h + 2 * k) * e, use_bias=cfg.qkv_bias, name="qkv_proj")(x_btd)
            q_btx, k_btx, v_btx = jnp.split(qkv_btx, [h * e, (h + k) * e], axis=-1)
        else:
            q_btx = dense(h * e, use_bias=cfg.qkv_bias, name="q_proj")(x_btd)
            k_btx = dense(k * e, use_bias=cfg.qkv_bias, name="k_proj")(x_btd)
            v_btx = dense(k * e, use_bias=cfg.qkv_bias, name="v_proj")(x_btd)
        q_bthe, k_btke, v_btke = q_btx.reshape(b, t, h, e), k_btx.reshape(b, t, k, e), v_btx.reshape(b, t, k, e)
        if cfg.qk_norm:  # Qwen3: RMSNorm over each head's vector, before RoPE
            q_bthe = RMSNorm(cfg.rms_norm_eps, dtype, param_dtype, name="q_norm")(q_bthe)
            k_btke = RMSNorm(cfg.rms_norm_eps, dtype, param_dtype, name="k_norm")(k_btke)
        q_bthe = apply_rope(q_bthe, cos, sin)
        k_btke = apply_rope(k_btke, cos, sin)

        q_bkgte = q_bthe.reshape(b, t, k, h // k, e).transpose(0, 2, 3, 1, 4)
        if cache is None and t >= BLOCKWISE_FROM and t % TRAIN_QUERY_BLOCK == 0:
            out_bkgte = blockwise_attend(q_bkgte, k_btke.transpose(0, 2, 3, 1), v_btke.transpose(0, 2, 1, 3), mask,
                                         TRAIN_QUERY_BLOCK)
        elif cache is None:
            out_bkgte = attend(q_bkgte, k_btke.transpose(0, 2, 3, 1), v_btke.transpose(0, 2, 1, 3), mask)
        else:  # mask is kv_mask_bs: which cache slots hold tokens; causality comes from the write positions
            cache = _write_rows(cache, k_btke, v_btke, write_pos_b)
            out_bkgte = cached_attention(q_bkgte, cache["k"].astype(dtype), cache["v"].astype(dtype), write_pos_b,
                                         mask)
        out_bthe = out_bkgte.transpose(0, 3, 1, 2, 4).reshape(b, t, h * e)
        out_btd = dense(cfg.hidden_size, use_bias=False, name="o_proj")(out_bthe)
        return out_btd, cache


class MLP(nn.Module):
    """SwiGLU. fused: gate and up come from one [d, 2f] projection "gate_up_proj" (the decode layout)."""

    cfg: ModelConfig
    fused: bool = False

    @nn.compact
    def __call__(self, x_btd):
        cfg = self.cfg
        dense = functools.partial(nn.Dense, use_bias=False, dtype=jnp.dtype(cfg.dtype),
                                  param_dtype=jnp.dtype(cfg.param_dtype))
        if self.fused:
            gate_btf, up_btf = jnp.split(dense(2 * cfg.intermediate_size, name="gate_up_proj")(x_btd), 2, axis=-1)
        else:
            gate_btf = dense(cfg.intermediate_size, name="gate_proj")(x_btd)
            up_btf = dense(cfg.intermediate_size, name="up_proj")(x_btd)
        return dense(cfg.hidden_size, name="down_proj")(nn.silu(gate_btf) * up_btf)


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)). Returns (x, this layer's updated cache or None);
    under nn.scan that is (carry, per-layer output)."""

    cfg: ModelConfig
    fused: bool = False  # the decode layout: fused qkv and gate/up projections

    @nn.compact
    def __call__(self, x_btd, cos, sin, mask, cache=None, write_pos_b=None):
        cfg = self.cfg
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        # The residual stream stays split over the batch (the weights are gathered, as FSDP means): left to itself,
        # XLA may split it over d like the fsdp-split kernels and copy the whole batch onto every chip
        # (sharding.along_batch; only under a mesh, i.e. in the training programs).
        x_btd = along_batch(x_btd)
        normed = RMSNorm(cfg.rms_norm_eps, dtype, param_dtype, name="input_norm")(x_btd)
        attn_btd, cache = Attention(cfg, self.fused, name="attn")(normed, cos, sin, mask, cache, write_pos_b)
        x_btd = along_batch(x_btd + attn_btd)
        normed = RMSNorm(cfg.rms_norm_eps, dtype, param_dtype, name="post_attn_norm")(x_btd)
        x_btd = along_batch(x_btd + MLP(cfg, self.fused, name="mlp")(normed))
        return x_btd, cache


class Decoder(nn.Module):
    """The whole model with its layers scanned (no cache): `forward`, training and parameter init."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, input_ids_bt, positions_bt, mask_bts, return_hidden=False):
        cfg = self.cfg
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype, name="embed")
        x_btd = embed(input_ids_bt)
        cos, sin = rope_cos_sin(cfg, positions_bt)

        layer_cls = DecoderLayer
        if cfg.remat_policy != "none":
            layer_cls = nn.remat(DecoderLayer, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=False)
        layers = nn.scan(layer_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                         in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.num_layers)(cfg, name="layers")
        x_btd, _ = layers(x_btd, cos, sin, mask_bts)

        x_btd = RMSNorm(cfg.rms_norm_eps, dtype, param_dtype, name="final_norm")(x_btd)
        if return_hidden:
            return x_btd
        if cfg.tie_word_embeddings:
            logits_btv = embed.attend(x_btd)
        else:
            logits_btv = nn.Dense(cfg.vocab_size, use_bias=False, dtype=dtype, param_dtype=param_dtype,
                                  name="lm_head")(x_btd)
        return logits_btv.astype(jnp.float32)


# ---------------------------------------------------------------------------------------------- pure functions

def positions_from_mask(attention_mask_bt, segment_ids_bt=None):
    """RoPE positions: count of real tokens before each token (left padding); restart at each packed segment."""
    if segment_ids_bt is None:
        return jnp.maximum(jnp.cumsum(attention_mask_bt.astype(jnp.int32), axis=-1) - 1, 0)
    t = segment_ids_bt.shape[-1]
    idx_bt = jnp.broadcast_to(jnp.arange(t), segment_ids_bt.shape)
    is_start = jnp.concatenate([jnp.ones_like(segment_ids_bt[:, :1], bool),
                                segment_ids_bt[:, 1:] != segment_ids_bt[:, :-1]], axis=-1)
    start_bt = jax.lax.cummax(jnp.where(is_start, idx_bt, 0), axis=1)
    return idx_bt - start_bt


def attention_mask_bts(attention_mask_bt, segment_ids_bt=None):
    """Causal mask over real keys (and, for packed rows, keys of the same segment)."""
    t = attention_mask_bt.shape[-1]
    causal_ts = jnp.tril(jnp.ones((t, t), bool))
    mask = causal_ts[None] & (attention_mask_bt[:, None, :] != 0)
    if segment_ids_bt is not None:
        mask = mask & (segment_ids_bt[:, :, None] == segment_ids_bt[:, None, :]) & (segment_ids_bt[:, None, :] != 0)
    return mask


def init_params(cfg: ModelConfig, rng=None):
    """Random parameters (linen default initializers); mainly for tests and demos."""
    rng = jax.random.PRNGKey(0) if rng is None else rng
    ids = jnp.zeros((1, 1), jnp.int32)
    return Decoder(cfg).init(rng, ids, ids, jnp.ones((1, 1, 1), bool))["params"]


def decode_params(params):
    """The decode layout of the same weights: "layers" a tuple of per-layer dicts, with q/k/v and gate/up each
    concatenated into one projection (fewer, larger dots per step), which `forward_cached` reads in place.
    Unchanged if already converted. Inference converts once per engine; training keeps the stacked layout."""
    if isinstance(params["layers"], tuple):
        return params
    return {**params, "layers": _split_and_fuse_layers(params["layers"])}


@jax.jit
def _split_and_fuse_layers(stacked):  # one program, not one dispatch per leaf and layer
    def fuse(modules, names, fused_name):
        """modules with the projections `names` replaced by one whose outputs are theirs, concatenated."""
        parts = [modules[n] for n in names]
        fused = {leaf: jnp.concatenate([p[leaf] for p in parts], axis=-1) for leaf in parts[0]}  # kernel, bias
        return {**{n: m for n, m in modules.items() if n not in names}, fused_name: fused}

    layers = []
    for i in range(jax.tree.leaves(stacked)[0].shape[0]):
        layer = jax.tree.map(lambda w: w[i], stacked)
        layers.append({**layer, "attn": fuse(layer["attn"], ("q_proj", "k_proj", "v_proj"), "qkv_proj"),
                       "mlp": fuse(layer["mlp"], ("gate_proj", "up_proj"), "gate_up_proj")})
    return tuple(layers)


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("return_hidden",))
def _forward(cfg, params, input_ids_bt, attention_mask_bt, segment_ids_bt, positions_bt, return_hidden=False):
    if positions_bt is None:
        positions_bt = positions_from_mask(attention_mask_bt, segment_ids_bt)
    mask = attention_mask_bts(attention_mask_bt, segment_ids_bt)
    return Decoder(cfg).apply({"params": params}, input_ids_bt, positions_bt, mask, return_hidden=return_hidden)


def forward(cfg: ModelConfig, params, input_ids, attention_mask=None, *, segment_ids=None, positions=None,
            return_hidden=False):
    """Logits [batch, seq, vocab] (float32) without a cache. Jit-able; `cfg` is static.

    attention_mask: 1 = token, 0 = pad (left padding is fine). segment_ids: packed rows, 0 = pad; attention stays
    inside a segment and positions restart at each one. positions: explicit RoPE positions (default: from the mask).
    return_hidden: return the final-norm hidden states [batch, seq, hidden] instead of logits.
    """
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids) if segment_ids is None else (jnp.asarray(segment_ids) != 0)
    attention_mask = jnp.asarray(attention_mask, jnp.int32)
    if segment_ids is not None:
        segment_ids = jnp.asarray(segment_ids, jnp.int32)
    return _forward(cfg, params, input_ids, attention_mask, segment_ids, positions, return_hidden=return_hidden)


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None):
    """An empty KV cache: per layer {"k": [batch, kv_heads, head_dim, max_len], "v": [batch, kv_heads, max_len,
    head_dim]} (see CACHE_SLOT_AXIS)."""
    dtype = jnp.dtype(dtype or cfg.dtype)
    k, e = cfg.num_kv_heads, cfg.head_dim
    return tuple({"k": jnp.zeros((batch, k, e, max_len), dtype), "v": jnp.zeros((batch, k, max_len, e), dtype)}
                 for _ in range(cfg.num_layers))


def forward_cached(cfg: ModelConfig, params, input_ids_bt, positions_bt, cache, write_pos_b, kv_mask_bs,
                   last_only=False):
    """One step of cached decoding (prefill when t > 1). Returns (logits [b, t or 1, v] float32, new cache).

    Row b's new keys/values go to cache slots [write_pos_b[b], write_pos_b[b] + t); query i of row b attends to slot j
    iff kv_mask_bs[b, j] and j <= write_pos_b[b] + i. kv_mask_bs must already mark the new tokens' slots.
    Not jitted here: call it inside your own jit (with cfg static and the cache donated). Layers are unrolled;
    pass `decode_params(params)` (converted once, outside the jit) to read each layer's weights in place.
    """
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    write_pos_b = write_pos_b.astype(jnp.int32)
    embedding_vd = params["embed"]["embedding"]
    x_btd = embedding_vd[input_ids_bt].astype(dtype)
    cos, sin = rope_cos_sin(cfg, positions_bt)
    new_cache = []
    for layer_params, layer_cache in zip(decode_params(params)["layers"], cache, strict=True):
        x_btd, layer_cache = DecoderLayer(cfg, fused=True).apply({"params": layer_params}, x_btd, cos, sin, kv_mask_bs,
                                                     layer_cache, write_pos_b)
        new_cache.append(layer_cache)
    if last_only:  # the norm is per position: normalise only what the head reads
        x_btd = x_btd[:, -1:]
    x_btd = RMSNorm(cfg.rms_norm_eps, dtype, param_dtype).apply({"params": params["final_norm"]}, x_btd)
    head_dv = embedding_vd.T if cfg.tie_word_embeddings else params["lm_head"]["kernel"]
    logits_btv = jnp.dot(x_btd, head_dv.astype(dtype))  # as nn.Dense / nn.Embed.attend compute it
    return logits_btv.astype(jnp.float32), tuple(new_cache)
