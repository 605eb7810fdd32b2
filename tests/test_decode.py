"""The decoder: greedy parity with transformers' generate, EOS handling, sampling filters and frequencies, and the
continuous-batching engine against plain generate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen3Config

from reasonrank_jax.inference import generate
from reasonrank_jax.inference.decode import bucket_length
from reasonrank_jax.inference.engine import DecodeEngine, attend_bucket
from reasonrank_jax.inference.sampling import SamplingParams, filtered_logits, next_token
from reasonrank_jax.models import load_pretrained

VOCAB = 96
SMALL = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)


@pytest.fixture(scope="module", params=["qwen2", "qwen3"])
def model_pair(request, tmp_path_factory):
    config = Qwen2Config(**SMALL) if request.param == "qwen2" else Qwen3Config(**SMALL, head_dim=16)
    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # weights large enough that greedy continuations vary
        for name, tensor in model.state_dict().items():
            tensor.copy_((1.0 if name.endswith("norm.weight") else 0.0) + 0.12 * torch.randn_like(tensor))
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    cfg, params = load_pretrained(path)
    return model, cfg, params


def _hf_greedy(model, prompt, max_new_tokens, eos_ids):
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_ids or None,
                             pad_token_id=0)
    return out[0, len(prompt):].tolist()


def _prompts(seed, lengths):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, VOCAB, n).tolist() for n in lengths]


def test_greedy_matches_transformers_token_for_token_on_a_ragged_batch(model_pair):
    model, cfg, params = model_pair
    prompts = _prompts(0, [3, 11, 6, 17, 1])
    ours = generate(cfg, params, prompts, max_new_tokens=24, eos_ids=[])
    for prompt, tokens in zip(prompts, ours):
        assert len(tokens) == 24
        assert tokens == _hf_greedy(model, prompt, 24, [])
    assert len({tuple(t) for t in ours}) > 1  # not a degenerate model


def test_greedy_matches_transformers_across_cache_segments(model_pair, monkeypatch):
    """A small first segment makes the cache grow six times (64 -> 80 -> ... -> 192 slots) during generation; an
    EOS hit in the first segment still ends the whole loop."""
    from reasonrank_jax.inference import decode

    monkeypatch.setattr(decode, "MIN_SEGMENT", 64)
    assert decode.cache_segments(16, 130) == (64, 80, 96, 112, 128, 160, 192)
    model, cfg, params = model_pair
    prompts = _prompts(7, [9, 16, 2])
    ours = generate(cfg, params, prompts, max_new_tokens=130, eos_ids=[])
    for prompt, tokens in zip(prompts, ours):
        assert tokens == _hf_greedy(model, prompt, 130, [])
    eos = ours[0][20]
    stopped = generate(cfg, params, prompts, max_new_tokens=130, eos_ids=[eos])
    for prompt, tokens in zip(prompts, stopped):
        assert tokens == _hf_greedy(model, prompt, 130, [eos])


def test_greedy_matches_transformers_through_blocked_prefill(model_pair, monkeypatch):
    """Shrunken attention blocks: the ragged prompts (bucket 64) prefill through the blockwise online-softmax path,
    across several query and key blocks, and the continuation still equals transformers' token for token."""
    from reasonrank_jax.models import transformer

    monkeypatch.setattr(transformer, "QUERY_BLOCK", 16)
    monkeypatch.setattr(transformer, "KEY_BLOCK", 16)
    model, cfg, params = model_pair
    prompts = _prompts(11, [40, 57, 23])
    for prompt, tokens in zip(prompts, generate(cfg, params, prompts, max_new_tokens=20, eos_ids=[])):
        assert tokens == _hf_greedy(model, prompt, 20, [])


def test_greedy_token_is_argmax_with_first_index_on_ties():
    from reasonrank_jax.inference.sampling import greedy_token

    rng = np.random.default_rng(5)
    logits = rng.integers(-3, 4, (64, 37)).astype(np.float32)  # many ties
    logits[0] = -np.inf
    logits[1, 5] = np.inf
    logits[2] = np.finfo(np.float32).min
    expected = np.argmax(logits, axis=-1)
    np.testing.assert_array_equal(np.asarray(greedy_token(jnp.asarray(logits))), expected)


@pytest.mark.parametrize("prompt_len, max_new, minimum, expected", [
    (64, 64, 256, (128,)),  # everything fits below the minimum segment
    (64, 256, 256, (256, 320)),
    (1024, 256, 256, (1280,)),  # a quarter octave above 1024 holds the 256 new tokens
    # long prompt: the output room doubles (256, 512, 1024, 2048) until a quarter octave (2048) is the smaller step
    (8192, 3172, 256, (8448, 8704, 9216, 10240, 11392)),
    # short prompt: quarter octaves 20, 24, 28, 32 (step 4), 40 .. 64 (step 8), 80 .. 128 (16), then 160 and the end
    (16, 130, 16, (20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192))])
def test_cache_segments(prompt_len, max_new, minimum, expected):
    from reasonrank_jax.inference.decode import cache_segments

    assert cache_segments(prompt_len, max_new, minimum) == expected


def test_cache_segments_bound_the_attended_slots():
    """Every decode step attends to its segment: never more than max(minimum, 1.25 x the slots it needs, the
    prompt + twice the output so far), and the last segment holds prompt + max_new_tokens."""
    from reasonrank_jax.inference.decode import cache_segments

    for prompt_len, max_new in [(16, 3172), (64, 256), (1024, 3172), (4096, 3172), (9000, 700), (300, 5)]:
        sizes = cache_segments(prompt_len, max_new)
        assert sizes[-1] >= prompt_len + max_new and list(sizes) == sorted(set(sizes))
        for step in range(1, max_new):
            needed = prompt_len + step  # slots written after step `step` (its input token at slot p + step - 1)
            attended = next(size for size in sizes if size >= needed)
            assert attended <= max(256, 1.25 * needed + 64, prompt_len + 2 * step + 64), (prompt_len, step)


def test_eos_stops_each_sequence_and_is_included(model_pair):
    model, cfg, params = model_pair
    prompts = _prompts(1, [4, 9, 13])
    free_running = generate(cfg, params, prompts, max_new_tokens=30, eos_ids=[])
    eos = free_running[1][5]  # a token the second sequence emits at step 5
    stopped = generate(cfg, params, prompts, max_new_tokens=30, eos_ids=[eos])
    for full, out, prompt in zip(free_running, stopped, prompts):
        expected = full[: full.index(eos) + 1] if eos in full else full
        assert out == expected
        assert out == _hf_greedy(model, prompt, 30, [eos])
    assert stopped[1][-1] == eos and len(stopped[1]) <= 6


def test_top_k_one_is_greedy_and_sampling_is_seeded(model_pair):
    _, cfg, params = model_pair
    prompts = _prompts(2, [5, 8])
    greedy = generate(cfg, params, prompts, max_new_tokens=12, eos_ids=[])
    assert generate(cfg, params, prompts, 12, [], temperature=1.3, top_k=1, seed=9) == greedy
    a = generate(cfg, params, prompts, 12, [], temperature=1.0, seed=1)
    assert a == generate(cfg, params, prompts, 12, [], temperature=1.0, seed=1)
    assert a != generate(cfg, params, prompts, 12, [], temperature=1.0, seed=2)


def test_logprobs_are_the_models(model_pair):
    model, cfg, params = model_pair
    prompt = _prompts(4, [7])[0]
    tokens, logprobs = generate(cfg, params, [prompt], 6, [], return_logprobs=True)
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens[0]])).logits[0].double()
    expected = torch.log_softmax(logits, -1)[len(prompt) - 1:-1].gather(1, torch.tensor(tokens[0])[:, None])[:, 0]
    np.testing.assert_allclose(logprobs[0], expected.numpy(), atol=1e-4)


def test_filters_on_hand_computed_distribution():
    logits = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    kept = lambda **kw: np.isfinite(np.asarray(filtered_logits(logits, SamplingParams(1.0, **kw)))[0]) & (  # noqa
        np.asarray(filtered_logits(logits, SamplingParams(1.0, **kw)))[0] > -1e30)
    assert kept(top_k=2).tolist() == [True, True, False, False, False]
    assert kept(top_p=0.7).tolist() == [True, True, False, False, False]  # 0.5 + 0.2 reaches 0.7
    assert kept(top_p=0.71).tolist() == [True, True, True, False, False]
    assert kept(top_p=0.4).tolist() == [True, False, False, False, False]
    assert kept(min_p=0.3).tolist() == [True, True, True, False, False]  # floor 0.15
    assert kept(top_k=3, min_p=0.35).tolist() == [True, True, False, False, False]


def test_sampling_frequencies_match_the_softmax():
    probs = np.array([0.4, 0.3, 0.2, 0.1, 0.0])
    logits = jnp.log(jnp.asarray(probs) + 1e-30)[None].repeat(20000, axis=0)
    tokens, _ = jax.jit(next_token, static_argnums=2)(logits, jax.random.PRNGKey(0), SamplingParams(1.0))
    freq = np.bincount(np.asarray(tokens), minlength=5) / 20000
    np.testing.assert_allclose(freq, probs, atol=0.015)
    # temperature 0.5 sharpens to p^2 / sum p^2; top_p 0.75 renormalises over the first three
    tokens, _ = jax.jit(next_token, static_argnums=2)(logits, jax.random.PRNGKey(1), SamplingParams(0.5))
    sharp = probs**2 / np.sum(probs**2)
    np.testing.assert_allclose(np.bincount(np.asarray(tokens), minlength=5) / 20000, sharp, atol=0.015)
    tokens, _ = jax.jit(next_token, static_argnums=2)(logits, jax.random.PRNGKey(2), SamplingParams(1.0, top_p=0.75))
    np.testing.assert_allclose(np.bincount(np.asarray(tokens), minlength=5) / 20000,
                               [0.4 / 0.9, 0.3 / 0.9, 0.2 / 0.9, 0, 0], atol=0.015)


@pytest.mark.parametrize("max_len, long_prompts", [(64, []), (1100, [250, 300])])
def test_engine_matches_generate_with_refills_and_per_request_limits(model_pair, max_len, long_prompts, monkeypatch):
    """max_len 1100: chunks attend to a prefix of the cache (256, 320 or 640 slots) that grows and shrinks as long
    prompts come and go."""
    from reasonrank_jax.inference import engine as engine_module

    attend_lens = []
    decode_chunk = engine_module._decode_chunk
    monkeypatch.setattr(engine_module, "_decode_chunk",
                        lambda *a, **kw: attend_lens.append(kw["attend_len"]) or decode_chunk(*a, **kw))
    _, cfg, params = model_pair
    rng = np.random.default_rng(5)
    prompts = _prompts(6, list(rng.integers(1, 30, 9)) + long_prompts)
    n = len(prompts)
    limits = [int(x) for x in rng.integers(1, 25, n)]
    free_running = generate(cfg, params, prompts[:1], 25, [])[0]
    eos = [free_running[3]]
    # greedy with a limit of n is the first n tokens of the longer run (which stops at EOS anyway)
    expected = [tokens[:n] for tokens, n in zip(generate(cfg, params, prompts, 25, eos), limits)]
    engine = DecodeEngine(cfg, params, num_slots=3, max_len=max_len, eos_ids=eos, max_new_tokens=32, chunk=6)
    for i, (prompt, limit) in enumerate(zip(prompts, limits)):
        engine.submit(i, prompt, limit)
    got = {}
    while engine.has_work():
        for finished in engine.step():
            assert finished.request_id not in got
            got[finished.request_id] = finished.tokens
            assert finished.prompt_len == len(prompts[finished.request_id])
    assert [got[i] for i in range(n)] == expected
    assert engine.tokens_out == sum(map(len, expected)) and engine.tokens_in == sum(map(len, prompts))
    if max_len == 64:
        assert set(attend_lens) == {64}
    else:
        assert {256, 640} <= set(attend_lens) <= {256, 320, 640}
    with pytest.raises(ValueError, match="max_len"):
        engine.submit("too long", list(range(max_len - 4)), 10)


def test_engine_admits_the_highest_priority_first(model_pair):
    _, cfg, params = model_pair
    engine = DecodeEngine(cfg, params, num_slots=1, max_len=64, eos_ids=[], max_new_tokens=4)
    for name, prompt, priority in zip("abcd", _prompts(3, [5, 6, 7, 8]), [0, 2, 2, 1]):
        engine.submit(name, prompt, 3, priority=priority)
    order = []
    while engine.has_work():
        order += [finished.request_id for finished in engine.step()]
    assert order == ["b", "c", "d", "a"]  # equal priorities in submission order


def test_engine_chunks_stop_at_the_end_of_the_attended_prefix(model_pair, monkeypatch):
    """With 8-slot attend buckets every chunk of 40 steps runs into the end of its prefix within a few tokens: the
    chunk must stop there (a write past it would be lost) and the next one attend to a longer prefix."""
    from reasonrank_jax.inference import engine as engine_module

    attend_lens = []
    decode_chunk = engine_module._decode_chunk
    monkeypatch.setattr(engine_module, "_decode_chunk",
                        lambda *a, **kw: attend_lens.append(kw["attend_len"]) or decode_chunk(*a, **kw))
    monkeypatch.setattr(engine_module, "attend_bucket", lambda n: -(-n // 8) * 8)
    _, cfg, params = model_pair
    prompts = _prompts(7, [3, 17, 9, 30])
    expected = generate(cfg, params, prompts, 30, [])
    engine = DecodeEngine(cfg, params, num_slots=2, max_len=80, eos_ids=[], max_new_tokens=30, chunk=40)
    for i, prompt in enumerate(prompts):
        engine.submit(i, prompt)
    got = {}
    while engine.has_work():
        got.update((f.request_id, f.tokens) for f in engine.step())
    assert [got[i] for i in range(len(prompts))] == expected
    # each pair is admitted together and so left-padded to bucket 32; the 29 decode steps write slots 32..60
    assert set(attend_lens) == {40, 48, 56, 64}


def test_generate_with_the_batch_sharded_over_a_mesh(model_pair):
    from reasonrank_jax.sharding import make_mesh, shard_params

    if len(jax.devices()) < 8:
        pytest.skip("needs 8 virtual devices")
    _, cfg, params = model_pair
    mesh = make_mesh((4, 1, 2))
    prompts = _prompts(8, [5, 12, 3])
    expected = generate(cfg, params, prompts, 10, [])
    assert generate(cfg, shard_params(mesh, params), prompts, 10, [], mesh=mesh) == expected


@pytest.mark.parametrize("n, expected", [(1, 16), (16, 16), (17, 32), (1000, 1024), (1024, 1024), (1025, 1280),
                                         (2048, 2048), (2049, 2560), (9000, 10240), (12289, 14336), (16385, 20480)])
def test_prompt_buckets_are_powers_of_two_then_quarter_octaves(n, expected):
    assert bucket_length(n) == expected


@pytest.mark.parametrize("n, expected", [(1, 256), (256, 256), (257, 320), (321, 384), (449, 512), (513, 640),
                                         (769, 896), (1000, 1024), (1025, 1280), (5000, 5120), (7169, 8192),
                                         (19556, 20480)])
def test_attend_buckets_are_quarter_octaves(n, expected):
    assert attend_bucket(n) == expected
