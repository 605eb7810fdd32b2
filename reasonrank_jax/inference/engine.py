"""A continuous-batching decode engine: `num_slots` sequences decode together, each slot with its own cache row and
write position, and a finished slot is refilled with the queued request of highest priority (then the oldest)
while the others keep decoding.

Device state (one pytree, donated to every call, so the cache is updated in place):
  cache (a {"k", "v"} per layer, see models.transformer)   kv_mask [slots, max_len]
  write_pos, position, last_token [slots]
  active [slots]   count [slots] (tokens generated)   limit [slots] (max new tokens)   tokens [slots, max_new_tokens]
Two jitted programs: `_admit` (prefill a bucket of new prompts and insert them into free slots) and `_decode_chunk`
(a `lax.while_loop` of up to `chunk` decode steps that returns early when a slot finishes, so it is refilled at once).
The host syncs once per chunk, never per token. A chunk attends only to a prefix of the cache (`attend_len`: the
slots written so far, rounded up to a quarter octave), and ends when a slot is about to write past it, so that the
next chunk moves to the next bucket: the cache is sized for the longest prompt + max_new_tokens, but typical windows
use a fraction of it, and every decode step reads all the KV it attends to. A request's output depends only on its
prompt (and, when sampling, on the engine's key stream), not on which requests share the batch, up to floating-point
rounding: the prefill batch and the attended length change the order of sums, so a near-tie between two logits can
flip a greedy choice (the scheduler benchmark saw one window of 288 diverge, at token 1431 of 2000, at 32 slots).
"""

from __future__ import annotations

import functools
import heapq
import itertools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from reasonrank_jax.inference.decode import attend_bucket, bucket_length, left_pad, prefill
from reasonrank_jax.inference.sampling import SamplingParams, next_token
from reasonrank_jax.models.config import ModelConfig
from reasonrank_jax.models.transformer import decode_params, forward_cached, init_cache, map_cache


class PromptTooLong(ValueError):
    """A prompt's bucket plus its new tokens does not fit the engine's cache rows (max_len)."""


class Finished(NamedTuple):
    request_id: Any
    tokens: list[int]  # new tokens, including the EOS that ended the request (if one did)
    prompt_len: int
    logprobs: list[float] | None = None  # each token's log-probability (engines made with return_logprobs)


def _set_rows_prefix(full_bx, new_bx, rows_b, slot_axis):
    """full[rows_b[i], ..., :p, ...] = new[i] along `slot_axis` (p = new's slot count); out-of-range rows dropped."""
    index = (rows_b,) + (slice(None),) * (slot_axis - 1) + (slice(0, new_bx.shape[slot_axis]),)
    return full_bx.at[index].set(new_bx, mode="drop")


def _is_eos(token_b, eos_e):
    return jnp.any(token_b[:, None] == eos_e, axis=1)


@functools.partial(jax.jit, static_argnames=("cfg", "sampling"), donate_argnums=(2,))
def _admit(cfg, params, state, ids_bp, mask_bp, rows_b, limits_b, eos_e, key, *, sampling):
    b, p = ids_bp.shape
    max_len = state["kv_mask"].shape[1]
    cache, kv_mask, token, logprob, position = prefill(cfg, params, ids_bp, mask_bp, p, key, sampling)
    state = dict(state)
    # rows_b == num_slots marks a padding row of the bucket: the scatters below drop it.
    state["cache"] = map_cache(lambda full, new, axis: _set_rows_prefix(full, new, rows_b, axis), state["cache"],
                               cache)
    row_mask = jnp.zeros((b, max_len), jnp.int32).at[:, :p].set(kv_mask)
    state["kv_mask"] = state["kv_mask"].at[rows_b].set(row_mask, mode="drop")
    state["write_pos"] = state["write_pos"].at[rows_b].set(p, mode="drop")
    state["position"] = state["position"].at[rows_b].set(position, mode="drop")
    state["last_token"] = state["last_token"].at[rows_b].set(token, mode="drop")
    state["count"] = state["count"].at[rows_b].set(1, mode="drop")
    state["limit"] = state["limit"].at[rows_b].set(limits_b, mode="drop")
    state["tokens"] = state["tokens"].at[rows_b, 0].set(token, mode="drop")
    if "logprobs" in state:
        state["logprobs"] = state["logprobs"].at[rows_b, 0].set(logprob, mode="drop")
    state["active"] = state["active"].at[rows_b].set(~_is_eos(token, eos_e) & (limits_b > 1), mode="drop")
    return state


@functools.partial(jax.jit, static_argnames=("cfg", "sampling", "chunk", "attend_len"), donate_argnums=(2,))
def _decode_chunk(cfg, params, state, eos_e, key, *, sampling, chunk, attend_len):
    """Up to `chunk` decode steps over cache slots [0, attend_len); stops before any slot writes at attend_len."""
    num_slots, max_len = state["kv_mask"].shape
    rows = jnp.arange(num_slots)
    full = state
    if attend_len < max_len:  # decode on a copy of the reachable prefix; write it back once at the end
        state = {**state, "cache": map_cache(lambda c, axis: jax.lax.slice_in_dim(c, 0, attend_len, axis=axis),
                                             state["cache"]),
                 "kv_mask": state["kv_mask"][:, :attend_len]}

    def cond(carry):
        step, finished_any, state, _ = carry
        # Back to the host as soon as a slot frees up, so that it is refilled without waiting out the chunk, or
        # reaches the end of the attended prefix, so that the next chunk attends to the next bucket.
        fits = jnp.all(~state["active"] | (state["write_pos"] < attend_len))
        return (step < chunk) & jnp.any(state["active"]) & ~finished_any & fits

    def body(carry):
        step, finished_any, state, key = carry
        key, step_key = jax.random.split(key)
        active = state["active"]
        write_pos = state["write_pos"]
        kv_mask = state["kv_mask"].at[rows, write_pos].set(jnp.where(active, 1, state["kv_mask"][rows, write_pos]))
        logits, cache = forward_cached(cfg, params, state["last_token"][:, None], state["position"][:, None],
                                       state["cache"], write_pos, kv_mask, last_only=True)
        token, logprob = next_token(logits[:, 0], step_key, sampling)
        count = state["count"]
        tokens = state["tokens"].at[rows, count].set(jnp.where(active, token, state["tokens"][rows, count]),
                                                     mode="drop")
        if "logprobs" in state:  # otherwise the log-softmax over the vocabulary is dead code, compiled away
            state = {**state, "logprobs": state["logprobs"].at[rows, count].set(
                jnp.where(active, logprob, state["logprobs"][rows, count]), mode="drop")}
        count = count + active
        finished = active & (_is_eos(token, eos_e) | (count >= state["limit"]))
        state = {**state, "cache": cache, "kv_mask": kv_mask, "tokens": tokens, "count": count,
                 "active": active & ~finished,
                 "last_token": jnp.where(active, token, state["last_token"]),
                 "write_pos": write_pos + active, "position": state["position"] + active}
        return step + 1, finished_any | jnp.any(finished), state, key

    _, _, state, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), jnp.bool_(False), state, key))
    if attend_len < max_len:
        state = {**state, "cache": map_cache(lambda f, c, axis: jax.lax.dynamic_update_slice_in_dim(f, c, 0, axis),
                                             full["cache"], state["cache"]),
                 "kv_mask": jax.lax.dynamic_update_slice_in_dim(full["kv_mask"], state["kv_mask"], 0, axis=1)}
    return state


class DecodeEngine:
    """Submit requests, call `step()` until `has_work()` is False; each step returns the requests that finished."""

    def __init__(self, cfg: ModelConfig, params, num_slots: int, max_len: int, eos_ids: list[int],
                 temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, min_p: float = 0.0, seed: int = 0,
                 max_new_tokens: int = 3172, chunk: int = 64, return_logprobs: bool = False,
                 scaled_logprobs: bool = False):
        """return_logprobs: Finished.logprobs holds each token's log-probability (raw logits, or with
        scaled_logprobs under logits / temperature: GRPO's policy)."""
        self.cfg, self.params = cfg, decode_params(params)  # per-layer weights, read in place by each step
        self.num_slots, self.max_len, self.max_new_tokens, self.chunk = num_slots, max_len, max_new_tokens, chunk
        self.sampling = SamplingParams(float(temperature), float(top_p), int(top_k), float(min_p),
                                       bool(scaled_logprobs))
        self._eos = jnp.asarray(list(eos_ids) or [-1], jnp.int32)
        self._key = jax.random.PRNGKey(seed)
        zeros = lambda dtype=jnp.int32: jnp.zeros((num_slots,), dtype)  # noqa: E731
        self._state = {
            "cache": init_cache(cfg, num_slots, max_len), "kv_mask": jnp.zeros((num_slots, max_len), jnp.int32),
            "write_pos": zeros(), "position": zeros(), "last_token": zeros(), "active": zeros(bool),
            "count": zeros(), "limit": zeros(), "tokens": jnp.zeros((num_slots, max_new_tokens), jnp.int32)}
        if return_logprobs:
            self._state["logprobs"] = jnp.zeros((num_slots, max_new_tokens), jnp.float32)
        # waiting requests, a heap of (-priority, submission number, (request_id, prompt, limit))
        self._queue: list = []
        self._submitted = itertools.count()
        self._slot_request: list[tuple[Any, int] | None] = [None] * num_slots
        self._start = np.zeros(num_slots, np.int64)  # cache slot of each slot's first generated token (its bucket)
        self._count = np.zeros(num_slots, np.int64)  # tokens generated, as of the last sync
        self.tokens_in = self.tokens_out = 0
        self.decode_steps = self.attended_slots = 0  # batched decode steps run; sum of their attended cache lengths

    def submit(self, request_id, prompt_ids: list[int], max_new_tokens: int | None = None,
               priority: float = 0) -> None:
        """Queue a request. Free slots take the highest priority first, equal priorities in submission order."""
        limit = self.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        if not 1 <= limit <= self.max_new_tokens:
            raise ValueError(f"max_new_tokens must be in 1..{self.max_new_tokens}, got {limit}")
        if not prompt_ids:
            raise ValueError("empty prompt")
        if bucket_length(len(prompt_ids)) + limit > self.max_len:
            raise PromptTooLong(f"prompt of {len(prompt_ids)} tokens (bucket {bucket_length(len(prompt_ids))}) + "
                             f"{limit} new tokens does not fit max_len={self.max_len}")
        heapq.heappush(self._queue, (-priority, next(self._submitted), (request_id, list(prompt_ids), limit)))

    def set_params(self, params) -> None:
        """New weights (e.g. the policy after a GRPO update) of the same shapes: no recompilation; requests in
        flight continue with them."""
        self.params = decode_params(params)

    def has_work(self) -> bool:
        return bool(self._queue) or any(r is not None for r in self._slot_request)

    def _next_key(self):
        self._key, key = jax.random.split(self._key)
        return key

    def _admit_waiting(self) -> None:
        free = [slot for slot, r in enumerate(self._slot_request) if r is None]
        batch = []
        while self._queue and len(batch) < len(free):
            request = self._queue[0][-1]
            p = bucket_length(max(len(x[1]) for x in batch + [request]))
            if any(p + x[2] > self.max_len for x in batch + [request]):
                break  # this prompt would push a neighbour's bucket past the cache; admit it next time
            batch.append(heapq.heappop(self._queue)[-1])
        if not batch:
            return
        p = bucket_length(max(len(x[1]) for x in batch))
        b = min(bucket_length(len(batch), minimum=1), bucket_length(self.num_slots, minimum=1))
        ids, mask = left_pad([x[1] for x in batch], p, b)
        rows = np.full(b, self.num_slots, np.int32)
        limits = np.ones(b, np.int32)
        for i, (request_id, prompt, limit) in enumerate(batch):
            rows[i], limits[i] = free[i], limit
            self._slot_request[free[i]] = (request_id, len(prompt))
            self._start[free[i]] = p
            self.tokens_in += len(prompt)
        self._state = _admit(self.cfg, self.params, self._state, jnp.asarray(ids), jnp.asarray(mask),
                             jnp.asarray(rows), jnp.asarray(limits), self._eos, self._next_key(),
                             sampling=self.sampling)

    def _collect(self) -> list[Finished]:
        active, count = jax.device_get((self._state["active"], self._state["count"]))
        self._count = np.asarray(count, np.int64)
        done_slots = [s for s, r in enumerate(self._slot_request) if r is not None and not active[s]]
        if not done_slots:
            return []
        tokens = np.asarray(jax.device_get(self._state["tokens"][np.asarray(done_slots)]))
        logprobs = (np.asarray(jax.device_get(self._state["logprobs"][np.asarray(done_slots)]))
                    if "logprobs" in self._state else None)
        finished = []
        for i, slot in enumerate(done_slots):
            request_id, prompt_len = self._slot_request[slot]
            finished.append(Finished(request_id, tokens[i, :count[slot]].tolist(), prompt_len,
                                     None if logprobs is None else logprobs[i, :count[slot]].tolist()))
            self._slot_request[slot] = None
            self.tokens_out += int(count[slot])
        return finished

    def _attend_len(self) -> int:
        # A slot's next write goes to slot start + count - 1, so start + count slots must be visible.
        reach = max(self._start[s] + self._count[s] for s, r in enumerate(self._slot_request) if r is not None)
        return min(self.max_len, attend_bucket(int(reach)))

    def step(self) -> list[Finished]:
        """Admit waiting requests into free slots, decode up to `chunk` tokens, return the finished requests."""
        self._admit_waiting()
        finished = self._collect()  # requests that ended at their first token
        if any(r is not None for r in self._slot_request) and not finished:
            count_before, attend_len = self._count.copy(), self._attend_len()
            self._state = _decode_chunk(self.cfg, self.params, self._state, self._eos, self._next_key(),
                                        sampling=self.sampling, chunk=self.chunk, attend_len=attend_len)
            finished = self._collect()
            steps = int(np.max(self._count - count_before))
            self.decode_steps += steps
            self.attended_slots += steps * attend_len
        return finished
