"""Batch generation: one jitted program per (batch, prompt, cache) bucket = prefill + a `lax.while_loop` decode loop.

The KV cache lives inside the program (created, updated in place and dropped there); no host round trip per token;
the loop ends as soon as every sequence has produced an EOS or `max_new_tokens`. Every decode step reads the whole
cache it attends to, so the cache grows with the output in segments of a quarter octave or less (`cache_segments`;
one copy, then a while_loop per segment) up to prompt + max_new_tokens: a step reads at most ~25% more slots than
are written, and a run that stops early (reasoning traces of ~750 tokens under a 3172-token cap) never attends to
room it did not use. Prompts are left-padded to a length bucket (`bucket_length`), so a run compiles a handful of
programs, not one per batch.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from reasonrank_jax.inference.sampling import SamplingParams, next_token
from reasonrank_jax.models.config import ModelConfig
from reasonrank_jax.models.transformer import decode_params, forward_cached, init_cache, map_cache

MIN_BUCKET = 16
MIN_SEGMENT = 256  # slots of the first cache segment, at least (then quarter octaves)
FINE_ABOVE = 1024


def bucket_length(n: int, minimum: int = MIN_BUCKET) -> int:
    """The length bucket of n: powers of two up to 1024, then four steps per octave (1280, 1536, 1792, 2048, 2560,
    ...), so a long prompt wastes at most 25% on padding (a 9k-token window prompt pads to 10240, not 16384) while a
    run still compiles only a few programs per octave."""
    n = max(n, minimum, 1)
    if n <= FINE_ABOVE:
        return 1 << math.ceil(math.log2(n))
    step = 1 << (math.floor(math.log2(n - 1)) - 2)
    return -(-n // step) * step


def left_pad(prompts: list[list[int]], length: int, batch: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """ids and mask [batch, length], prompts right-aligned; rows beyond len(prompts) are empty (all padding)."""
    ids = np.full((batch, length), pad_id, np.int32)
    mask = np.zeros((batch, length), np.int32)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, length - len(prompt):] = prompt
            mask[row, length - len(prompt):] = 1
    return ids, mask


def attend_bucket(n: int, minimum: int = MIN_SEGMENT) -> int:
    """Smallest multiple of a quarter octave (2^m * {1, 1.25, 1.5, 1.75}) that is >= max(n, minimum): a decode step
    attends to at most 25% more slots than it needs (about 10% on average), at four compiled sizes per octave."""
    n = max(n, minimum, 2)
    step = 1 << max(math.floor(math.log2(n - 1)) - 2, 0)
    return -(-n // step) * step


def cache_segments(prompt_len: int, max_new_tokens: int, minimum: int | None = None) -> tuple[int, ...]:
    """Growing cache sizes for a prompt bucket and an output cap (multiples of 64 for minimum >= 256); the last
    holds everything.

    Each segment grows the row by at most a quarter octave of its length (`attend_bucket`) and at most doubles the
    output room (at least `minimum` slots at a time), so a decode step attends to at most ~25% more slots than the
    row holds, whether the prompt is short (256, 320, 384, ... for a 64-token prompt) or long (8448, 8704, 9216,
    10240, ... for an 8192-token one).
    """
    minimum = MIN_SEGMENT if minimum is None else minimum
    round64 = lambda n: -(-n // 64) * 64  # noqa: E731
    total = round64(prompt_len + max_new_tokens)
    sizes = [prompt_len]
    while sizes[-1] < total:
        room = sizes[-1] - prompt_len
        sizes.append(min(total, attend_bucket(sizes[-1] + 1, minimum), round64(sizes[-1] + max(room, minimum))))
    return tuple(sizes[1:])


def prefill(cfg: ModelConfig, params, ids_bp, mask_bp, cache_len: int, key, sampling: SamplingParams,
            samples: int = 1):
    """Run the prompts through the model into a fresh cache of `cache_len` slots and choose each first token.

    samples > 1: each prompt is prefilled once and its cache row copied to `samples` consecutive rows (GRPO's
    rollouts of one prompt), each choosing its own first token; the outputs then have b * samples rows.
    Returns (cache, kv_mask_bs, first_token_b, first_logprob_b, next_position_b). Traceable (call inside jit).
    """
    b, p = ids_bp.shape
    cache = init_cache(cfg, b, cache_len)
    kv_mask_bs = jnp.zeros((b, cache_len), jnp.int32).at[:, :p].set(mask_bp)
    positions_bp = jnp.maximum(jnp.cumsum(mask_bp, axis=1) - 1, 0)
    logits, cache = forward_cached(cfg, params, ids_bp, positions_bp, cache, jnp.zeros(b, jnp.int32), kv_mask_bs,
                                   last_only=True)
    if samples > 1:
        cache = map_cache(lambda c, _: jnp.repeat(c, samples, axis=0), cache)
        kv_mask_bs, logits, mask_bp = (jnp.repeat(x, samples, axis=0) for x in (kv_mask_bs, logits, mask_bp))
    token_b, logprob_b = next_token(logits[:, 0], key, sampling)
    return cache, kv_mask_bs, token_b, logprob_b, jnp.sum(mask_bp, axis=1)


@functools.partial(jax.jit, static_argnames=("cfg", "cache_lens", "max_new_tokens", "sampling", "num_eos",
                                             "with_logprobs", "samples"))
def _generate(cfg, params, ids_bp, mask_bp, eos_e, key, *, cache_lens, max_new_tokens, sampling, num_eos,
              with_logprobs, samples=1):
    prompts, p = ids_bp.shape
    b = prompts * samples
    key, first_key = jax.random.split(key)
    cache, kv_mask, token, logprob, position = prefill(cfg, params, ids_bp, mask_bp, cache_lens[0], first_key,
                                                      sampling, samples)
    live = jnp.repeat(jnp.any(mask_bp, axis=1), samples)  # padding rows of the batch bucket are finished at once
    tokens_bn = jnp.zeros((b, max_new_tokens), jnp.int32).at[:, 0].set(token)
    logprobs_bn = jnp.zeros((b, max_new_tokens), jnp.float32).at[:, 0].set(logprob)
    is_eos = jnp.any(token[:, None] == eos_e, axis=1) if num_eos else jnp.zeros(b, bool)
    done = ~live | is_eos
    lengths = jnp.where(live, 1, 0)

    def cond(end_step):
        def until(state):
            step, _, _, _, _, done, *_ = state
            return (step < end_step) & ~jnp.all(done)
        return until

    def body(state):
        step, cache, kv_mask, tokens_bn, logprobs_bn, done, lengths, position, key = state
        key, step_key = jax.random.split(key)
        slot = jnp.full((b,), p + step - 1, jnp.int32)  # token `step - 1` is written at slot p + step - 1
        kv_mask = kv_mask.at[:, p + step - 1].set(1)
        last = tokens_bn[:, step - 1][:, None]
        logits, cache = forward_cached(cfg, params, last, position[:, None], cache, slot, kv_mask, last_only=True)
        token, logprob = next_token(logits[:, 0], step_key, sampling)
        tokens_bn = tokens_bn.at[:, step].set(jnp.where(done, 0, token))
        if with_logprobs:  # otherwise the log-softmax over the vocabulary is dead code and compiled away
            logprobs_bn = logprobs_bn.at[:, step].set(jnp.where(done, 0.0, logprob))
        lengths = lengths + (~done).astype(jnp.int32)
        if num_eos:
            done = done | jnp.any(token[:, None] == eos_e, axis=1)
        return step + 1, cache, kv_mask, tokens_bn, logprobs_bn, done, lengths, position + 1, key

    state = (jnp.int32(1), cache, kv_mask, tokens_bn, logprobs_bn, done, lengths, position, key)
    for i, size in enumerate(cache_lens):
        if i:  # more room: copy the cache into a larger one (once per segment, not per token)
            step, cache, kv_mask, *rest = state
            grow = size - cache_lens[i - 1]
            cache = map_cache(lambda c, axis: jnp.pad(c, [(0, grow) if a == axis else (0, 0) for a in range(c.ndim)]),
                              cache)
            state = (step, cache, jnp.pad(kv_mask, [(0, 0), (0, grow)]), *rest)
        # step s writes its input token at slot p + s - 1, which must lie inside this segment
        state = jax.lax.while_loop(cond(min(max_new_tokens, size - p + 1)), body, state)
    _, _, _, tokens_bn, logprobs_bn, _, lengths, _, _ = state
    return tokens_bn, logprobs_bn, lengths


def generate(cfg: ModelConfig, params, prompts: list[list[int]], max_new_tokens: int, eos_ids: list[int],
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, min_p: float = 0.0, seed: int = 0,
             *, return_logprobs: bool = False, mesh=None, samples: int = 1, key=None,
             scaled_logprobs: bool = False):
    """New tokens per prompt, up to and including the first EOS (eos_ids=[] never stops early).

    temperature 0 is greedy. return_logprobs=True also returns each token's log-probability under the model
    (raw logits, temperature 1; with scaled_logprobs, under logits / temperature, the distribution GRPO's policy
    is). samples > 1: that many outputs per prompt (prompt-major: prompt i's are rows i*samples ...), the prompt
    prefilled once and its KV cache shared by its samples. key: a jax PRNG key (default PRNGKey(seed)). The batch is padded to a power of two, prompts to a length bucket
    (`bucket_length`); the cache grows in segments (`cache_segments`) up to bucket + max_new_tokens slots.
    With a `mesh` ("data", "fsdp", "tensor"), the batch (and so the KV cache) is split over the data-parallel axes
    ("data", "fsdp"); place params with `reasonrank_jax.sharding.shard_params`. Stacked params are converted to the
    decode layout on every call; when calling repeatedly, pass `models.decode_params(params)` once instead.
    """
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    if not prompts:
        return ([], []) if return_logprobs else []
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if samples < 1:
        raise ValueError("samples must be >= 1")
    sampling = SamplingParams(float(temperature), float(top_p), int(top_k), float(min_p), bool(scaled_logprobs))
    p = bucket_length(max(len(x) for x in prompts))
    b = bucket_length(len(prompts), minimum=1)
    data_parallel = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
    b = -(-b // data_parallel) * data_parallel  # the prompt rows are split over the data axes (and so their samples)
    ids, mask = (jnp.asarray(x) for x in left_pad(prompts, p, b))
    if mesh is not None:
        from reasonrank_jax.sharding import batch_sharding

        ids, mask = jax.device_put((ids, mask), batch_sharding(mesh))
    eos = jnp.asarray(list(eos_ids) or [-1], jnp.int32)
    tokens, logprobs, lengths = jax.device_get(_generate(
        cfg, decode_params(params), ids, mask, eos, jax.random.PRNGKey(seed) if key is None else key,
        cache_lens=cache_segments(p, max_new_tokens), max_new_tokens=int(max_new_tokens), sampling=sampling,
        num_eos=len(eos_ids), with_logprobs=return_logprobs, samples=int(samples)))
    rows = range(len(prompts) * samples)
    outputs = [tokens[row, :lengths[row]].tolist() for row in rows]
    if return_logprobs:
        return outputs, [logprobs[row, :lengths[row]].tolist() for row in rows]
    return outputs
