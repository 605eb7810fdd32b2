"""GRPO's pieces against independent references: the loss and its gradient against a float64 torch transcription
of verl's code (SPEC §5), the group advantages against numpy, the decoder's sampled log-probs against the trainer's,
a prompt's shared prefill against prefilling every row, and the exact on-policy ratio."""

import numpy as np
import pytest

from reasonrank_jax.training.grpo import group_advantages, grpo_loss


def _torch_reference(logp, old, ref, adv, mask, clip, clip_c, kl_coef):
    """verl's compute_policy_loss (dual clip) + low_var_kl + token-mean, in float64 torch; (loss, aux, dloss/dlogp)."""
    import torch

    mask_t = torch.tensor(mask, dtype=torch.float64)
    keep = mask_t > 0
    logp_t = torch.tensor(np.where(mask > 0, logp, 0.0), dtype=torch.float64, requires_grad=True)
    old_t = torch.tensor(np.where(mask > 0, old, 0.0), dtype=torch.float64)
    ref_t = torch.tensor(np.where(mask > 0, ref, 0.0), dtype=torch.float64)
    a = torch.tensor(adv, dtype=torch.float64)[:, None].expand_as(logp_t)
    negative_approx_kl = torch.clamp(logp_t - old_t, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)
    losses1 = -a * ratio
    losses2 = -a * torch.clamp(ratio, 1 - clip, 1 + clip)
    clip_losses1 = torch.maximum(losses1, losses2)
    losses3 = -a * clip_c
    clip_losses2 = torch.min(losses3, clip_losses1)
    pg = torch.where(a < 0, clip_losses2, clip_losses1)
    kl = torch.clamp(ref_t - logp_t, min=-20.0, max=20.0)
    kld = torch.clamp(torch.exp(kl) - kl - 1, min=-10.0, max=10.0)

    def token_mean(x):
        return (x * mask_t).sum() / mask_t.sum()

    loss = token_mean(pg + kl_coef * kld)
    loss.backward()
    aux = {"pg_loss": token_mean(pg), "kl_loss": token_mean(kld),
           "pg_clipfrac": token_mean(torch.gt(losses2, losses1).double()),
           "pg_clipfrac_lower": token_mean((torch.gt(clip_losses1, losses3) & (a < 0)).double()),
           "ppo_kl": token_mean(-negative_approx_kl)}
    branches = {"ratio_outside": bool(((ratio < 1 - clip) | (ratio > 1 + clip))[keep].any()),
                "dual_clip": bool(((a < 0) & (clip_losses1 > losses3))[keep].any()),
                "kl_clamped": bool((torch.exp(kl) - kl - 1 > 10)[keep].any())}
    return float(loss.detach()), {k: float(v.detach()) for k, v in aux.items()}, logp_t.grad.numpy(), branches


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_and_gradient_equal_a_torch_transcription_of_verl(seed):
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    b, t = 6, 11
    old = rng.normal(-2.0, 1.0, (b, t))
    logp = old + rng.normal(0.0, 0.8, (b, t))          # ratios far outside 1 +- 0.2, some past c = 3
    ref = logp + rng.normal(0.0, 2.0, (b, t))          # some k3 values past the +-10 clamp
    adv = rng.normal(0.0, 1.5, b)
    adv[0], adv[1] = -2.5, 0.0                          # a strongly negative group and a zero advantage
    mask = (rng.random((b, t)) < 0.8).astype(np.float64)
    mask[:, 0] = 1.0
    logp_padded = np.where(mask > 0, logp, np.inf)     # padded tokens may hold anything
    for kwargs in ({}, {"clip": 0.1, "clip_c": 2.0, "kl_coef": 0.05}):
        full = {"clip": 0.2, "clip_c": 3.0, "kl_coef": 0.001, **kwargs}
        want_loss, want_aux, want_grad, branches = _torch_reference(logp, old, ref, adv, mask, **full)
        assert all(branches.values()), branches

        def loss_fn(x):
            return grpo_loss(x, jnp.asarray(old, jnp.float32), jnp.asarray(ref, jnp.float32),
                             jnp.asarray(adv, jnp.float32), jnp.asarray(mask), **kwargs)

        (loss, aux), grad = jax.value_and_grad(loss_fn, has_aux=True)(jnp.asarray(logp_padded, jnp.float32))
        np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5, atol=1e-6)
        for key, value in want_aux.items():
            np.testing.assert_allclose(float(aux[key]), value, rtol=1e-5, atol=1e-6, err_msg=key)
        np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-4, atol=1e-7)
        assert np.all(np.asarray(grad)[mask == 0] == 0.0)


def test_ratio_one_and_policy_equal_reference_give_zero_kl_and_no_clipping():
    rng = np.random.default_rng(3)
    logp = rng.normal(-1.0, 1.0, (4, 7)).astype(np.float32)
    adv = np.array([1.0, -1.0, 0.5, -0.5], np.float32)
    mask = np.ones((4, 7), np.float32)
    loss, aux = grpo_loss(logp, logp, logp, adv, mask)
    assert float(aux["kl_loss"]) == 0.0 and float(aux["ppo_kl"]) == 0.0
    assert float(aux["pg_clipfrac"]) == 0.0 and float(aux["pg_clipfrac_lower"]) == 0.0
    np.testing.assert_allclose(float(loss), -adv.mean(), rtol=1e-6)  # -A * 1, every row 7 tokens


def test_group_advantages_match_numpy_with_ddof_1():
    rng = np.random.default_rng(0)
    rewards = rng.random((5, 8)).astype(np.float32)
    rewards[2] = 0.5  # all equal: advantage 0
    want = (rewards - rewards.mean(1, keepdims=True)) / (rewards.std(1, ddof=1, keepdims=True) + 1e-6)
    got = np.asarray(group_advantages(rewards))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.all(got[2] == 0.0)
    # SPEC §5 (verl): a group of one rollout has mean 0 and std 1
    single = np.array([[0.7], [-1.0]], np.float32)
    np.testing.assert_allclose(np.asarray(group_advantages(single)), single / (1 + 1e-6), rtol=1e-7)


@pytest.fixture(scope="module")
def tiny_policy(synthetic_model):
    from reasonrank_jax.models import load_pretrained

    cfg, params = load_pretrained(synthetic_model)
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(3, 500, n)) for n in (5, 9, 3)]
    return cfg, params, prompts


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_decoder_log_probs_equal_the_trainers_on_the_sampled_tokens(tiny_policy, temperature):
    import jax

    from reasonrank_jax.training.grpo.rollout import padded, sequences
    from reasonrank_jax.training.logprobs import response_logprobs

    cfg, params, prompts = tiny_policy
    examples = [{"prompt_ids": p} for p in prompts]
    from reasonrank_jax.training.grpo.rollout import sample

    responses, sampler = sample(cfg, params, examples, rollouts=4, max_new_tokens=12, eos_ids=[2],
                                temperature=temperature, key=jax.random.PRNGKey(5))
    assert len(responses) == 12 and len({tuple(r) for r in responses}) > 3  # sampled, not copies
    seqs = sequences(examples, responses, 4, pad_id=0)
    r = seqs["response_mask_br"].shape[1]
    trainer = np.asarray(response_logprobs(cfg, params, seqs["input_ids_bt"], seqs["attention_mask_bt"], r,
                                           temperature=temperature))
    mask = seqs["response_mask_br"].astype(bool)
    delta = np.abs(trainer - padded(sampler, r))[mask]
    assert delta.mean() < 1e-4, delta.mean()
    assert delta.max() < 1e-3


def test_shared_prefill_equals_prefilling_every_row(tiny_policy):
    from reasonrank_jax.inference.decode import generate

    cfg, params, prompts = tiny_policy
    shared = generate(cfg, params, prompts, 10, [], samples=3)
    repeated = generate(cfg, params, [p for p in prompts for _ in range(3)], 10, [])
    assert shared == repeated


def test_first_mini_batch_ratio_is_exactly_one(tiny_policy):
    """With on_policy the old log-probs are the current ones: ppo_kl and the clip fractions are exactly 0 whatever
    old_logp holds, and the loss is -mean(A) plus the KL term."""
    import jax
    import jax.numpy as jnp

    from reasonrank_jax.training.grpo.rollout import sequences
    from reasonrank_jax.training.grpo.step import GRPOSpec, rollout_logprobs, update_step
    from reasonrank_jax.training.optim import make_optimizer
    from reasonrank_jax.training.sft import StepSpec
    from reasonrank_jax.training.state import init_state

    cfg, params, prompts = tiny_policy
    examples = [{"prompt_ids": p} for p in prompts[:2]]
    responses = [[7, 8, 9], [10, 11], [12], [13, 14, 15, 16]]
    seqs = {k: jnp.asarray(v)[None] for k, v in sequences(examples, responses, 2, pad_id=0).items()}
    optimizer, schedule = make_optimizer(1e-3, 10, schedule="constant", warmup_ratio=0.0)
    spec = GRPOSpec(StepSpec(cfg=cfg, optimizer=optimizer, schedule=schedule))
    old, ref = rollout_logprobs(spec, params, params, params, seqs)
    state = init_state(params, {}, optimizer, jax.random.PRNGKey(0))
    batch = {**seqs, "old_logp_br": old + 0.5, "ref_logp_br": ref, "sampler_logp_br": old,
             "advantages_b": jnp.asarray([[1.0, -1.0, 2.0, 0.0]]), "on_policy": jnp.bool_(True)}
    _, metrics = update_step(spec, state, batch)
    assert float(metrics["ppo_kl"]) == 0.0 and float(metrics["pg_clipfrac"]) == 0.0
    assert float(metrics["logp_diff"]) < 1e-5  # the update's log-probs are the log-prob pass's
    assert abs(float(metrics["kl_loss"])) < 1e-6  # policy = reference, up to two programs' rounding
    tokens = np.asarray(seqs["response_mask_br"][0]).sum(1)
    want = -(np.array([1.0, -1.0, 2.0, 0.0]) * tokens).sum() / tokens.sum()
    np.testing.assert_allclose(float(metrics["pg_loss"]), want, rtol=1e-6)
    _, off = update_step(spec, state, {**batch, "on_policy": jnp.bool_(False)})
    assert float(off["ppo_kl"]) != 0.0  # without it the (shifted) old log-probs are used


def test_engine_reports_log_probs_and_takes_new_weights_without_recompiling(tiny_policy):
    import jax

    from reasonrank_jax.inference import engine as engine_module
    from reasonrank_jax.inference.decode import generate
    from reasonrank_jax.training.grpo.rollout import sequences
    from reasonrank_jax.training.logprobs import response_logprobs

    cfg, params, prompts = tiny_policy
    want, want_logprobs = generate(cfg, params, prompts, 8, [], return_logprobs=True)

    def run(engine):
        for i, prompt in enumerate(prompts):
            engine.submit(i, prompt, 8)
        done = {}
        while engine.has_work():
            done.update({f.request_id: f for f in engine.step()})
        return [done[i] for i in range(len(prompts))]

    engine = engine_module.DecodeEngine(cfg, params, num_slots=2, max_len=64, eos_ids=[], max_new_tokens=8,
                                        chunk=4, return_logprobs=True)
    got = run(engine)
    assert [f.tokens for f in got] == want
    np.testing.assert_allclose(np.concatenate([f.logprobs for f in got]), np.concatenate(want_logprobs), atol=1e-5)
    seqs = sequences([{"prompt_ids": p} for p in prompts], [f.tokens for f in got], 1, pad_id=0)
    trainer = response_logprobs(cfg, params, seqs["input_ids_bt"], seqs["attention_mask_bt"],
                                seqs["response_mask_br"].shape[1])
    mask = seqs["response_mask_br"].astype(bool)
    assert np.abs(np.asarray(trainer)[mask] - np.concatenate([f.logprobs for f in got])).mean() < 1e-4

    compiled = (engine_module._admit._cache_size(), engine_module._decode_chunk._cache_size())
    scaled = jax.tree.map(lambda x: x * 1.5, params)
    engine.set_params(scaled)
    changed = run(engine)
    assert (engine_module._admit._cache_size(), engine_module._decode_chunk._cache_size()) == compiled
    want_scaled = generate(cfg, scaled, prompts, 8, [])
    assert [f.tokens for f in changed] == want_scaled != want


@pytest.mark.parametrize("tokenized", [True, False])
def test_rl_prompts_from_a_built_dataset_equal_those_from_the_parquet(synthetic_model, tmp_path, capsys, tokenized):
    from reasonrank_jax.cli import main
    from reasonrank_jax.data.rl import read_rl_examples
    from reasonrank_jax.data.synthetic import SyntheticTask, _write_parquet, rl_records
    from reasonrank_jax.text import load_tokenizer

    manual = tmp_path / "manual"
    manual.mkdir()
    _write_parquet(str(manual / "rl.parquet"), rl_records(SyntheticTask(num_queries=8, seed=1), "train"))
    argv = ["data", "build", "rl", "--manual-dir", str(manual), "--data-dir", str(tmp_path / "tfds"),
            "--validation-fraction", "0"]
    assert main(argv + (["--tokenizer", str(synthetic_model), "--max-prompt-length", "1024"] if tokenized else [])) == 0
    version_dir = capsys.readouterr().out.strip().splitlines()[-1].removeprefix("wrote ")
    tokenizer = load_tokenizer(str(synthetic_model))
    built, built_counts = read_rl_examples(version_dir, tokenizer, 1024)
    direct, direct_counts = read_rl_examples(str(manual / "rl.parquet"), tokenizer, 1024)
    assert built_counts == direct_counts and len(built) == len(direct) > 4

    def key(e):
        return (tuple(int(i) for i in e["prompt_ids"]), e["label"], tuple(e["initial_list"]),
                tuple(e["relevant_docids"]), e["qid"])

    assert sorted(map(key, built)) == sorted(map(key, direct))
    short, counts = read_rl_examples(version_dir, tokenizer, 100)  # every synthetic prompt is ~270 tokens
    assert not short and counts["dropped_prompt_too_long"] == len(direct)
