"""Host-side halves of a GRPO step: rollouts from our decoder, their rewards, and the trainer's sequences.

Rollouts: `inference.decode.generate` with `samples = grpo.rollouts` (each prompt prefilled once, its KV cache
shared by its rollouts), sampling keyed by (seed, step) so that a resumed run draws the same rollouts, and the
sampler's log-probs under logits / temperature (compared with the trainer's as `logp_diff`).
Rewards: decoded text -> `ranking.reward.parse_response` on the host -> `reward_views` in one jitted
vmap over [prompts, rollouts] (SPEC §4).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from reasonrank_jax.inference.decode import bucket_length, generate
from reasonrank_jax.ranking.reward import MAX_IDS, MULTIVIEW_WEIGHTS, NDCG_ONLY_WEIGHTS, parse_response, \
    reward_views, stack_parsed

REWARD_WEIGHTS = {"multiview": MULTIVIEW_WEIGHTS, "ndcg": NDCG_ONLY_WEIGHTS}


def sample(cfg, policy_params, examples: list[dict], *, rollouts: int, max_new_tokens: int, eos_ids: list[int],
           temperature: float, key, mesh=None) -> tuple[list[list[int]], list[list[float]]]:
    """(tokens, log-probs) of `rollouts` samples per example, prompt-major (example i: rows i*rollouts ...)."""
    return generate(cfg, policy_params, [list(map(int, e["prompt_ids"])) for e in examples], max_new_tokens,
                    eos_ids, temperature=temperature, key=key, samples=rollouts, return_logprobs=True, mesh=mesh,
                    scaled_logprobs=True)


@functools.partial(jax.jit, static_argnames=("weights",))
def _views(parsed, weights):
    return jax.vmap(lambda p: reward_views(p, weights))(parsed)


def score(texts: list[str], examples: list[dict], rollouts: int, reward: str = "multiview") -> dict[str, np.ndarray]:
    """Reward views of texts[i * rollouts + j] (rollout j of examples[i]): each a [prompts, rollouts] array."""
    max_ids = max([MAX_IDS] + [len(e["initial_list"]) for e in examples])
    parsed = [parse_response(text, e["label"], e["initial_list"], e["relevant_docids"], max_ids=max_ids)
              for i, e in enumerate(examples) for text in texts[i * rollouts:(i + 1) * rollouts]]
    views = jax.device_get(_views(stack_parsed(parsed), REWARD_WEIGHTS[reward]))
    return {k: np.asarray(v).reshape(len(examples), rollouts) for k, v in views.items()}


def trainer_prompt_bucket(n: int) -> int:
    """Multiples of 128 up to 1024, then the decoder's quarter octaves: the trainer pays for every padded position
    twice (log-prob pass and update), so its prompt buckets are finer than powers of two."""
    return -(-n // 128) * 128 if n <= 1024 else bucket_length(n)


def sequences(examples: list[dict], responses: list[list[int]], rollouts: int, pad_id: int,
              response_len: int | None = None) -> dict[str, np.ndarray]:
    """The trainer's rows [prompt left-padded to its bucket | response right-padded to `response_len` (default:
    the bucket of the longest)]: input_ids_bt, attention_mask_bt [n, T], response_mask_br [n, R]."""
    prompts = [np.asarray(e["prompt_ids"], np.int32) for e in examples for _ in range(rollouts)]
    p = trainer_prompt_bucket(max(len(x) for x in prompts))
    r = response_len or bucket_length(max(max((len(x) for x in responses), default=1), 1))
    n = len(prompts)
    ids = np.full((n, p + r), pad_id, np.int32)
    mask = np.zeros((n, p + r), np.int32)
    for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        ids[row, p - len(prompt):p] = prompt
        ids[row, p:p + len(response)] = response
        mask[row, p - len(prompt):p + len(response)] = 1
    return {"input_ids_bt": ids, "attention_mask_bt": mask, "response_mask_br": mask[:, p:].copy()}


def padded(rows: list[list[float]], width: int) -> np.ndarray:
    out = np.zeros((len(rows), width), np.float32)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def advantages_of(rewards_pr: np.ndarray) -> np.ndarray:
    from reasonrank_jax.training.grpo.loss import group_advantages

    return np.asarray(jax.device_get(jax.jit(group_advantages)(jnp.asarray(rewards_pr))))
