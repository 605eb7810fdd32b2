"""Tunix side of `bench_grpo.py`: runs in Tunix's own virtualenv (google-tunix 0.1.7), never imports reasonrank_jax.

    TUNIX_VENV/bin/python benchmarks/tunix_grpo_worker.py --model-dir DIR --prompts prompts.npz --rollouts G
                                                         --max-prompt P --max-response R [--lr ..] [--warmup 2]

Loads the Hugging Face checkpoint in DIR twice with Tunix's `models/qwen3/params.create_model_from_safe_tensors`
(float32, a 1 x 1 ("fsdp", "tp") mesh on the single CPU device): the actor (which the vanilla rollout engine shares,
as every role is on the same mesh) and the frozen reference. Builds an `RLCluster` (rollout engine "vanilla",
temperature 1, top_p 1, `max_prompt_length` P, `max_tokens_to_generate` R, KV cache P + R) and a `GRPOLearner`
(G = --rollouts, one iteration, beta = --kl-coef with the "low_var_kl" (k3) estimator, epsilon 0.2, dual-clip
epsilon_c 3, token-mean loss aggregation: the settings of our `train grpo`), AdamW behind a global-norm clip, one
optimizer update per step (mini batch = train micro batch = rollout micro batch = logps micro batch = all prompts).

Prompts are exact token ids: the tokenizer is `IdsTokenizer` (text "17 345 9" <-> ids [17, 345, 9]; pad 0, no BOS,
EOS = the vocabulary size, which the model never samples, so every rollout runs all R tokens, as on our side), and
the reward is `bench_grpo.cheap_reward`'s twin below (the share of even token ids in the completion).

`GRPOLearner.train` pulls one batch of prompts per step from an iterator; this worker's iterator is driven by stdin,
so a step runs only when asked and is timed from the moment its batch is handed out to the moment the next one is
requested (everything of the step: rollout, reference log-probs, reward and advantages, the update, Tunix's metric
buffering). Phases are timed by wrapping `rl_cluster.generate`, `get_ref_per_token_logps`, the learner's
`_compute_rewards` + advantage estimator, and `update_actor` (each blocked on its result). Commands, one per line:

    run N   -> N lines {"step": i, "seconds": t, "phases": {...}, "others": c} then {"done": N}
    quit    -> exits

The first line printed is {"ready": true, "compile_s": first step s, "warmup_s": [...]} after --warmup steps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tunix_worker import _strip_device_count_flag, cpu_snapshot, emit, others_cores, tunix_config  # noqa: E402


class IdsTokenizer:
    """Text is space-separated token ids: exact prompts on both sides with no vocabulary to agree on."""

    def __init__(self, eos: int):
        self._eos = eos

    def encode(self, text: str, **kwargs) -> list[int]:
        return [int(x) for x in text.split()]

    def decode(self, ids, **kwargs) -> str:
        return " ".join(str(int(i)) for i in ids)

    def bos_id(self) -> int:
        return 0  # falsy: Tunix's sampler prepends no BOS

    def eos_id(self) -> int:
        return self._eos

    def pad_id(self) -> int:
        return 0


def cheap_reward(prompts, completions, **kwargs) -> list[float]:
    """The share of even token ids in each completion (the same function as bench_grpo.cheap_reward)."""
    out = []
    for text in completions:
        ids = text.split()
        out.append(sum(int(t) % 2 == 0 for t in ids) / max(len(ids), 1))
    return out


def main() -> None:  # noqa: C901 - one linear setup
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--prompts", required=True, help=".npz: ids [n, P] int32 (0 = left padding), steps of "
                                                         "--prompts-per-step rows")
    parser.add_argument("--prompts-per-step", type=int, required=True)
    parser.add_argument("--rollouts", type=int, required=True)
    parser.add_argument("--max-prompt", type=int, required=True)
    parser.add_argument("--max-response", type=int, required=True)
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--clip-norm", type=float, default=1.0)
    parser.add_argument("--kl-coef", type=float, default=0.001)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    _strip_device_count_flag()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import jax
    import numpy as np
    import optax
    from flax import nnx
    from jax.sharding import AxisType
    from tunix.models.qwen3 import params as params_lib
    from tunix.rl import rl_cluster as rl_cluster_lib
    from tunix.rl.grpo import grpo_learner
    from tunix.rl.rollout import base_rollout

    with open(os.path.join(args.model_dir, "config.json"), encoding="utf-8") as f:
        hf = json.load(f)
    if hf["model_type"] != "qwen3":
        raise SystemExit(f"tunix grpo worker: model type {hf['model_type']!r}: only qwen3")
    config = tunix_config("qwen3", hf)
    vocab = hf["vocab_size"]
    ids = np.load(args.prompts)["ids"]
    texts = [" ".join(str(t) for t in row[row > 0]) for row in ids]
    per_step = args.prompts_per_step
    batches = [texts[i:i + per_step] for i in range(0, len(texts) - per_step + 1, per_step)]

    mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), axis_types=(AxisType.Auto,) * 2)
    with mesh:
        actor = params_lib.create_model_from_safe_tensors(args.model_dir, config, mesh, dtype=jax.numpy.float32)
        reference = params_lib.create_model_from_safe_tensors(args.model_dir, config, mesh,
                                                              dtype=jax.numpy.float32)
    optimizer = optax.chain(*([optax.clip_by_global_norm(args.clip_norm)] if args.clip_norm > 0 else []),
                            optax.adamw(args.lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0))
    training_config = rl_cluster_lib.RLTrainingConfig(
        actor_optimizer=optimizer, eval_every_n_steps=10**9, max_steps=10**9, mini_batch_size=per_step,
        train_micro_batch_size=per_step, rollout_micro_batch_size=per_step, compute_logps_micro_batch_size=per_step)
    rollout_config = base_rollout.RolloutConfig(
        max_tokens_to_generate=args.max_response, max_prompt_length=args.max_prompt,
        kv_cache_size=args.max_prompt + args.max_response, temperature=1.0, top_p=1.0, top_k=None,
        eos_tokens=[vocab], data_type=jax.numpy.float32)
    cluster_config = rl_cluster_lib.ClusterConfig(
        role_to_mesh={rl_cluster_lib.Role.ACTOR: mesh, rl_cluster_lib.Role.REFERENCE: mesh,
                      rl_cluster_lib.Role.ROLLOUT: mesh},
        rollout_engine="vanilla", offload_to_cpu=False, training_config=training_config,
        rollout_config=rollout_config)
    cluster = rl_cluster_lib.RLCluster(actor=actor, reference=reference, tokenizer=IdsTokenizer(vocab),
                                       cluster_config=cluster_config)
    algo = grpo_learner.GRPOConfig(num_generations=args.rollouts, num_iterations=1, beta=args.kl_coef,
                                   kl_loss_mode="low_var_kl", epsilon=0.2, loss_agg_mode="token-mean")
    algo.epsilon_c = 3.0  # dual clip, read with getattr by Tunix's GRPO loss
    algo.kl_clamp_value = 10.0
    learner = grpo_learner.GRPOLearner(rl_cluster=cluster, algo_config=algo, reward_fns=[cheap_reward])

    phases: dict[str, float] = {}

    def timed(name, fn, block=True):
        def wrapper(*a, **k):
            start = time.perf_counter()
            out = fn(*a, **k)
            if block:
                jax.block_until_ready(out)
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - start
            return out
        return wrapper

    shape: dict[str, object] = {}
    generate = timed("rollout", cluster.generate, block=False)  # returns host lists

    def generate_and_count(*a, **k):
        out = generate(*a, **k)
        shape["rows"] = len(out.tokens)
        shape["new_tokens"] = sorted({len(t) for t in out.tokens})
        return out

    cluster.generate = generate_and_count
    cluster.get_ref_per_token_logps = timed("logprobs", cluster.get_ref_per_token_logps)
    learner._compute_rewards = timed("reward", learner._compute_rewards, block=False)
    update_actor = cluster.update_actor

    def update_and_block(*a, **k):
        out = update_actor(*a, **k)
        jax.block_until_ready(nnx.state(cluster.actor_trainer.model))
        return out

    cluster.update_actor = timed("update", update_and_block, block=False)

    def steps():
        """One batch per step; a step ends when the next batch is requested."""
        cursor, started, mark, warm = 0, None, None, []
        remaining = 0
        while True:
            if started is not None:  # the previous step is over
                after = cpu_snapshot()
                seconds = after[0] - started[0]
                if len(warm) < args.warmup:
                    warm.append(seconds)
                    if len(warm) == args.warmup:
                        emit({"ready": True, "compile_s": warm[0], "warmup_s": warm, "jax": jax.__version__,
                              "devices": len(jax.devices())})
                else:
                    emit({"step": mark, "seconds": seconds, "phases": dict(phases),
                          "others": others_cores(started, after), **shape,
                          "train_steps": int(cluster.actor_trainer.train_steps)})
                    remaining -= 1
                    mark += 1
                    if remaining == 0:
                        emit({"done": mark})
            if len(warm) >= args.warmup and remaining == 0:
                line = sys.stdin.readline()
                command = line.split()
                while command and command[0] == "run" and int(command[1]) == 0:
                    emit({"done": 0})
                    command = sys.stdin.readline().split()
                if not command or command[0] != "run":
                    return  # quit (or end of input): GRPOLearner.train ends on StopIteration
                remaining, mark = int(command[1]), 0
            phases.clear()
            batch = batches[cursor % len(batches)]
            cursor += 1
            started = cpu_snapshot()
            yield {"prompts": np.asarray(batch)}

    try:
        learner.train(steps())
    except StopIteration:
        pass
    sys.stdout.flush()
    os._exit(0)  # the learner's executor thread and loggers need no orderly shutdown


if __name__ == "__main__":
    main()
