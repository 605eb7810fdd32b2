"""`reasonrank-jax train grpo`: the side-effect edge of a GRPO run (data, rollouts, logs, checkpoints, resume).

One step s (SPEC §5): the prompts of (seed, epoch, step) -> `grpo.rollouts` samples each from our decoder with the
current policy (keyed by (seed, s)) -> host parse and in-graph reward -> group advantages -> old and reference
log-probs -> `grpo.prompts_per_step / grpo.mini_batch` updates. Everything is a function of (config, step), so a
rerun of the same command resumes from the latest complete checkpoint and reproduces the rollouts, rewards and
updates of an uninterrupted run. The run directory is the SFT trainer's (training/loop.py) plus `eval.jsonl`
(held-out rewards of the starting model at step 0 and every `train.eval_every` steps).
"""

from __future__ import annotations

import time

import numpy as np

from reasonrank_jax.training.sections import GRPOConfig

POLICY_KEYS = ("loss", "pg_loss", "kl_loss", "pg_clipfrac", "pg_clipfrac_lower", "ppo_kl", "grad_norm")


def _load(path: str, tokenizer, max_prompt: int, field: str):
    from reasonrank_jax.data.rl import read_rl_examples
    from reasonrank_jax.errors import InputError

    examples, counts = read_rl_examples(path, tokenizer, max_prompt)
    if not examples:
        raise InputError(f"no usable prompts ({dict(counts) or 'empty'}; grpo.max_prompt={max_prompt})", path=path,
                         field=field)
    return examples, counts


def _decode(tokenizer, responses: list[list[int]]) -> list[str]:
    return [tokenizer.decode(r, skip_special_tokens=False) for r in responses]


def _view_means(views: dict, prefix: str = "") -> dict:
    format_ok, valid = views["format_ok"], views["valid"]
    return {f"{prefix}reward_mean": float(views["reward"].mean()), f"{prefix}ndcg_mean": float(views["ndcg"].mean()),
            f"{prefix}recall_mean": float(views["recall"].mean()), f"{prefix}rbo_mean": float(views["rbo"].mean()),
            f"{prefix}format_fail_rate": float(1.0 - format_ok.mean()),
            f"{prefix}invalid_rate": float((format_ok & ~valid).mean())}


def run_grpo(config: GRPOConfig) -> int:  # noqa: C901 - the edge where every side effect of a run lives
    import jax
    import jax.numpy as jnp
    from tqdm import tqdm

    from reasonrank_jax.errors import InputError
    from reasonrank_jax.models.lora import merge_lora
    from reasonrank_jax.text import load_tokenizer
    from reasonrank_jax.text.tokenizer import eos_token_ids
    from reasonrank_jax.training import loop, setup
    from reasonrank_jax.training.checkpoint import Checkpointer, PreemptionGuard
    from reasonrank_jax.training.grpo import rollout
    from reasonrank_jax.training.grpo.step import (GRPOSpec, jit_policy_logprobs, jit_reference_logprobs,
                                                   jit_update_step)

    model, data, train, g = config.model, config.data, config.train, config.grpo
    run, config_text, mesh = loop.open_run(config, "train grpo")
    if jax.process_count() > 1:
        # The rollouts gather each host's sampled tokens to score them; that exchange is not written yet.
        raise InputError(f"train grpo runs as one process for now (started as {jax.process_count()}); multi-host "
                         "GRPO rollouts are not implemented: use one host's devices (mesh section)",
                         field="launch")

    tokenizer = load_tokenizer(setup.tokenizer_dir(model))
    examples, counts = _load(data.path, tokenizer, g.max_prompt, "data.path")
    heldout = _load(data.heldout, tokenizer, g.max_prompt, "data.heldout")[0] if data.heldout else None
    steps_per_epoch = len(examples) // g.prompts_per_step
    if steps_per_epoch == 0:
        raise InputError(f"{len(examples)} prompts are fewer than grpo.prompts_per_step ({g.prompts_per_step})",
                         path=data.path, field="grpo.prompts_per_step")
    total_steps = train.steps or train.epochs * steps_per_epoch

    prepared = setup.prepare(config, mesh, total_steps)
    state, use_lora = prepared.state, prepared.use_lora
    spec = GRPOSpec(prepared.spec, clip=g.clip, clip_c=g.clip_c, kl_coef=g.kl_coef, temperature=g.temperature)
    cfg = prepared.spec.cfg
    # The reference is the starting policy: under LoRA the base itself (one copy of the weights); under full
    # fine-tuning a frozen copy, taken before any checkpoint is restored.
    ref_params = None if use_lora else jax.jit(lambda p: jax.tree.map(jnp.copy, p),
                                               out_shardings=prepared.shardings.params)(state.params)
    checkpointer = Checkpointer(f"{train.out}/checkpoints", keep=train.keep, save_every=train.save_every)
    start = checkpointer.latest_step() or 0
    if start:
        state = setup.restore(prepared, checkpointer, start)
    metadata = prepared.metadata(config)
    loop.start_run(run, train.out, config_text)
    log = loop.MetricsLog(train.out, start)
    eval_log = loop.MetricsLog(train.out, start, name="eval.jsonl", tensorboard=False)

    update = jit_update_step(spec, prepared.shardings, mesh)
    policy_pass = jit_policy_logprobs(spec, prepared.shardings, mesh)
    reference_pass = jit_reference_logprobs(spec, prepared.shardings, mesh)
    merge = jax.jit(lambda params, lora: merge_lora(params, lora, prepared.spec.lora_scale)) if use_lora else None
    eos_ids = eos_token_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    micro = train.micro_batch
    updates_per_step = g.prompts_per_step // g.mini_batch

    def policy(state):
        return merge(state.params, state.lora) if use_lora else state.params

    eval_key = jax.random.fold_in(jax.random.PRNGKey(train.seed), 2**31 - 1)  # the same draws at every evaluation

    def evaluate(state) -> dict:
        """Held-out rewards of the policy: greedy (heldout_*), and sampled as in training (heldout_sampled_*:
        grpo.rollouts samples per prompt at grpo.temperature, the same random stream at every evaluation)."""
        params = policy(state)
        greedy = rollout.sample(cfg, params, heldout, rollouts=1, max_new_tokens=g.max_response, eos_ids=eos_ids,
                                temperature=0.0, key=eval_key, mesh=mesh)[0]
        sampled = rollout.sample(cfg, params, heldout, rollouts=g.rollouts, max_new_tokens=g.max_response,
                                 eos_ids=eos_ids, temperature=g.temperature, key=eval_key, mesh=mesh)[0]
        return {**_view_means(rollout.score(_decode(tokenizer, greedy), heldout, 1, g.reward), "heldout_"),
                **_view_means(rollout.score(_decode(tokenizer, sampled), heldout, g.rollouts, g.reward),
                              "heldout_sampled_")}

    def to_micro(arrays: dict, rows: slice) -> dict:
        """Rows of [n, ...] host arrays as [n / micro, micro, ...] device arrays on the mesh."""
        from reasonrank_jax.training.grpo.step import batch_shardings

        shardings = batch_shardings(mesh)
        return {k: jax.device_put(v[rows].reshape(-1, micro, *v.shape[1:]), shardings[k]) for k, v in arrays.items()}

    filtered = sum(v for k, v in counts.items() if k != "kept")
    print(f"train grpo: {len(examples)} prompts ({filtered} over grpo.max_prompt={g.max_prompt} filtered out), "
          f"{steps_per_epoch} steps per epoch, {total_steps} steps of {g.prompts_per_step} prompts x {g.rollouts} "
          f"rollouts, {updates_per_step} update(s) per step, "
          f"{'LoRA rank ' + str(config.lora.rank) if use_lora else 'full fine-tuning'}, mesh {dict(mesh.shape)}"
          + (f"; resuming at step {start}" if start else ""), flush=True)
    if heldout and start == 0:
        baseline = {"step": 0, **evaluate(state)}
        eval_log.write(baseline)
        print(f"train grpo: starting model on {len(heldout)} held-out prompts: greedy reward "
              f"{baseline['heldout_reward_mean']:.4f}, nDCG@10 {baseline['heldout_ndcg_mean']:.4f}; sampled reward "
              f"{baseline['heldout_sampled_reward_mean']:.4f}, nDCG@10 {baseline['heldout_sampled_ndcg_mean']:.4f}",
              flush=True)

    preempted, s = False, start - 1  # s: the step index in flight (none when the run is already complete)
    with PreemptionGuard() as guard, tqdm(total=total_steps, initial=start, unit="step", desc="grpo",
                                          dynamic_ncols=True) as progress:
        for s in range(start, total_steps):
            epoch, in_epoch = divmod(s, steps_per_epoch)
            order = np.random.default_rng([train.seed, epoch]).permutation(len(examples))
            chosen = [examples[i] for i in order[in_epoch * g.prompts_per_step:(in_epoch + 1) * g.prompts_per_step]]
            times, mark = {}, time.perf_counter()

            key = jax.random.fold_in(jax.random.PRNGKey(train.seed), s)
            responses, sampler_logps = rollout.sample(cfg, policy(state), chosen, rollouts=g.rollouts,
                                                      max_new_tokens=g.max_response, eos_ids=eos_ids,
                                                      temperature=g.temperature, key=key, mesh=mesh)
            times["time_rollout_s"], mark = time.perf_counter() - mark, time.perf_counter()

            views = rollout.score(_decode(tokenizer, responses), chosen, g.rollouts, g.reward)
            advantages = rollout.advantages_of(views["reward"]).reshape(-1)
            times["time_reward_s"], mark = time.perf_counter() - mark, time.perf_counter()

            seqs = rollout.sequences(chosen, responses, g.rollouts, pad_id)
            n, r = seqs["response_mask_br"].shape
            rows_per_update = g.mini_batch * g.rollouts
            # Reference log-probs for every row (when the KL term is on); old log-probs only for the rows of the
            # second and later updates: the first update is on-policy and uses its own (exactly).
            ref_logp, old_logp = np.zeros((n, r), np.float32), np.zeros((n, r), np.float32)
            if g.kl_coef > 0:
                reference = state.params if use_lora else ref_params
                ref_logp = np.asarray(jax.device_get(reference_pass(reference, to_micro(seqs, slice(0, n))))
                                      ).reshape(n, r)
            if updates_per_step > 1:
                later = slice(rows_per_update, n)
                old_logp[later] = np.asarray(jax.device_get(policy_pass(state.params, state.trainable,
                                                                        to_micro(seqs, later)))).reshape(-1, r)
            times["time_logprobs_s"], mark = time.perf_counter() - mark, time.perf_counter()

            response_mask = seqs["response_mask_br"].astype(bool)
            arrays = {**seqs, "old_logp_br": old_logp, "ref_logp_br": ref_logp,
                      "sampler_logp_br": rollout.padded(sampler_logps, r),
                      "advantages_b": advantages.astype(np.float32)}
            per_update = []
            for j in range(updates_per_step):
                batch = to_micro(arrays, slice(j * rows_per_update, (j + 1) * rows_per_update))
                batch["on_policy"] = jax.device_put(np.bool_(j == 0))
                state, metrics = update(state, batch)
                per_update.append(jax.device_get(metrics))
            times["time_update_s"] = time.perf_counter() - mark
            step_time = sum(times.values())

            lengths = np.asarray([len(x) for x in responses])
            clipped = np.asarray([len(x) >= g.max_response and (not x or x[-1] not in eos_ids) for x in responses])
            record = {"step": s + 1, "epoch": epoch,
                      **_view_means(views),
                      "reward_max": float(views["reward"].max()), "reward_min": float(views["reward"].min()),
                      "zero_adv_group_rate": float(np.mean(views["reward"].max(1) == views["reward"].min(1))),
                      "response_len_mean": float(lengths.mean()), "response_len_max": int(lengths.max()),
                      "response_clip_rate": float(clipped.mean()),
                      **{k: float(np.mean([float(m[k]) for m in per_update])) for k in POLICY_KEYS},
                      "lr": float(per_update[0]["lr"]), "tokens": int(response_mask.sum()),
                      "logp_diff": float(per_update[0]["logp_diff"]), **{k: round(v, 6) for k, v in times.items()},
                      "step_time_s": round(step_time, 6), "tokens_per_s": float(response_mask.sum()) / step_time}
            if heldout and ((train.eval_every and (s + 1) % train.eval_every == 0) or s + 1 == total_steps):
                held = evaluate(state)
                record.update(held)
                eval_log.write({"step": s + 1, **held})
            log.write(record)
            progress.update(1)
            progress.set_postfix(reward=f"{record['reward_mean']:.3f}", refresh=False)
            if loop.save_after_step(checkpointer, s + 1, total_steps, prepared.saved(state), metadata, guard):
                preempted = True
                break
    return loop.finish("train grpo", train.out, s + 1, total_steps, preempted, checkpointer, log, eval_log)
