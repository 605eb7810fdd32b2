"""Index-based batches: restart equivalence, process slices, bucketing, tokenized SFT/RL examples."""

import numpy as np
import pytest

from reasonrank_jax.data import (BatchPlan, batch_indices, bucket_lengths, loss_mask, pad_rows, sft_batch,
                                 steps_per_epoch, tokenize_rl, tokenize_sft)


def _run(n, gb, seed, epochs, start=(0, 0)):
    out = {}
    for epoch in range(epochs):
        for step in range(steps_per_epoch(n, gb)):
            if (epoch, step) >= start:
                out[(epoch, step)] = batch_indices(n, gb, seed, epoch, step)
    return out


def test_restart_sees_the_same_batches():
    full = _run(103, 8, seed=7, epochs=3)
    resumed = _run(103, 8, seed=7, epochs=3, start=(1, 5))  # a fresh "process" after a crash
    for key, batch in resumed.items():
        np.testing.assert_array_equal(batch, full[key])
    # each epoch is a permutation prefix: no repeats, the remainder (103 % 8) left out
    epoch0 = np.concatenate([full[(0, s)] for s in range(12)])
    assert len(set(epoch0.tolist())) == 96
    assert not np.array_equal(full[(0, 0)], full[(1, 0)])
    assert not np.array_equal(full[(0, 0)], _run(103, 8, seed=8, epochs=1)[(0, 0)])
    # the order is numpy's PCG64 permutation seeded by (seed, epoch), independently recomputed
    ref = np.random.Generator(np.random.PCG64([7, 2])).permutation(103)
    np.testing.assert_array_equal(full[(2, 3)], ref[24:32])


@pytest.mark.parametrize("count", [2, 4])
def test_processes_read_disjoint_slices_covering_the_batch(count):
    for step in range(5):
        whole = batch_indices(80, 16, 3, 1, step)
        parts = [batch_indices(80, 16, 3, 1, step, process_index=p, process_count=count) for p in range(count)]
        assert sum(len(p) for p in parts) == 16
        assert len(set(np.concatenate(parts).tolist())) == 16
        np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_batch_errors():
    with pytest.raises(IndexError):
        batch_indices(10, 4, 0, 0, 2)
    with pytest.raises(ValueError):
        batch_indices(10, 4, 0, 0, 0, process_index=0, process_count=3)


def test_bucketed_plan_is_deterministic_complete_and_pads_little():
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(8.6, 0.5, size=2000), 300, 23552).astype(int)  # SFT-like spread
    buckets = bucket_lengths(23552)
    assert buckets[-1] == 23552 and buckets == sorted(set(buckets)) and len(buckets) <= 32
    plan = BatchPlan(lengths, 16, seed=5, buckets=buckets)
    again = BatchPlan(lengths, 16, seed=5, buckets=buckets)
    for step in (0, 7, 124):
        np.testing.assert_array_equal(plan.indices(1, step), again.indices(1, step))
        halves = [plan.indices(1, step, p, 2) for p in range(2)]
        np.testing.assert_array_equal(np.concatenate(halves), plan.global_batch_indices(1, step))
        assert plan.padded_length(1, step) >= lengths[plan.global_batch_indices(1, step)].max()
    seen = np.concatenate([plan.global_batch_indices(0, s) for s in range(plan.steps_per_epoch)])
    assert len(set(seen.tolist())) == 2000
    unbucketed = BatchPlan(lengths, 16, seed=5, buckets=buckets, bucket_window=1)
    bucketed, plain = plan.padding_fraction(0), unbucketed.padding_fraction(0)
    assert bucketed < 0.12 and plain > 0.5
    # reference: padding of the plain plan computed by hand from batch_indices
    slots = real = 0
    for s in range(unbucketed.steps_per_epoch):
        b = unbucketed.global_batch_indices(0, s)
        slots += 16 * min(x for x in buckets if x >= lengths[b].max())
        real += lengths[b].sum()
    assert plain == pytest.approx(1 - real / slots)


def test_loss_mask_and_padding():
    np.testing.assert_array_equal(loss_mask(2, 5, 7), [0, 0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(pad_rows([np.array([1, 2]), np.array([3])], 3, 0, side="left"),
                                  [[0, 1, 2], [0, 0, 3]])
    batch = sft_batch([{"input_ids": [5, 6, 7], "prompt_length": 1}, {"input_ids": [8, 9], "prompt_length": 1}],
                      4, pad_id=0)
    np.testing.assert_array_equal(batch["input_ids_bt"], [[5, 6, 7, 0], [8, 9, 0, 0]])
    np.testing.assert_array_equal(batch["loss_mask_bt"], [[0, 1, 1, 0], [0, 1, 0, 0]])
    # the response window: start = the position predicting the first response token, width capped at length - 1
    np.testing.assert_array_equal(batch["response_start_b"], [0, 0])
    np.testing.assert_array_equal(batch["response_mask_br"], [[1, 1, 0], [1, 0, 0]])


def test_response_window_and_bucket():
    from reasonrank_jax.data.stream import response_bucket, response_window, sft_response_width

    assert [response_bucket(n, 4096) for n in (0, 1, 128, 129, 700, 1024, 1025)] == [128, 128, 128, 256, 1024,
                                                                                       1024, 2048]
    assert response_bucket(3000, 2049) == 2048 and response_bucket(5, 40) == 39
    mask = np.zeros((2, 3, 10), np.int32)
    mask[0, 0, 4:7] = 1  # start 3
    mask[1, 2, 8:10] = 1  # runs to the row's end: 0 past it
    start, window = response_window(mask, 4)
    assert start.shape == (2, 3) and window.shape == (2, 3, 4)
    np.testing.assert_array_equal(start, [[3, 0, 0], [0, 0, 7]])
    np.testing.assert_array_equal(window[0, 0], [1, 1, 1, 0])
    np.testing.assert_array_equal(window[1, 2], [1, 1, 0, 0])
    assert window[0, 1].sum() == window[1, 0].sum() == 0
    assert response_window(mask)[1].shape == (2, 3, 9)
    with pytest.raises(ValueError, match="window width"):
        response_window(mask, 2)
    mask[0, 1, 0] = 1
    with pytest.raises(ValueError, match="position 0"):
        response_window(mask)
    examples = [{"input_ids": list(range(300)), "prompt_length": 100}, {"input_ids": [1] * 50, "prompt_length": 40}]
    assert sft_response_width(examples, 384) == 256
    batch = sft_batch(examples, 384, 0, response_width=256)
    assert batch["response_mask_br"].shape == (2, 256)
    np.testing.assert_array_equal(batch["response_start_b"], [99, 39])
    assert batch["response_mask_br"].sum() == batch["loss_mask_bt"].sum() == 210


def test_tokenize_sft_masks_only_the_response(qwen2_tokenizer_dir):
    from reasonrank_jax.text import load_tokenizer

    tok = load_tokenizer(qwen2_tokenizer_dir)
    output = "<think>because [2] says so</think> <answer>[2] > [1]</answer>"
    ids, prompt_len, status = tokenize_sft(tok, "You are RankLLM.", "Rank these.", output, 10_000)
    assert status == "kept"
    full = tok.apply_chat_template([{"role": "system", "content": "You are RankLLM."},
                                    {"role": "user", "content": "Rank these."},
                                    {"role": "assistant", "content": output}], tokenize=False)
    assert tok.decode(ids) == full  # prompt + response is exactly the rendered conversation
    response = tok.decode(ids[prompt_len:])
    assert response.startswith(output) and response.rstrip().endswith("<|im_end|>")
    assert tok.decode(ids[:prompt_len]).endswith("assistant\n")
    mask = loss_mask(prompt_len, len(ids), len(ids) + 3)
    assert tok.decode(ids[mask[:len(ids)] == 1]) == response and mask[len(ids):].sum() == 0
    # over-length: truncate keeps max_length tokens, drop drops; a prompt filling max_length always drops
    cut, p2, st = tokenize_sft(tok, "You are RankLLM.", "Rank these.", output, prompt_len + 3)
    assert st == "truncated" and len(cut) == prompt_len + 3 and p2 == prompt_len
    np.testing.assert_array_equal(cut, ids[:prompt_len + 3])
    assert tokenize_sft(tok, "You are RankLLM.", "Rank these.", output, prompt_len + 3, "drop")[2] == \
        "dropped_too_long"
    assert tokenize_sft(tok, "You are RankLLM.", "Rank these.", output, prompt_len)[2] == \
        "dropped_prompt_too_long"
    messages = [{"role": "user", "content": "Rank these."}]
    prompt_ids, st = tokenize_rl(tok, messages, 1000)
    assert st == "kept" and tok.decode(prompt_ids) == tok.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)
    assert tokenize_rl(tok, messages, len(prompt_ids) - 1) == (None, "dropped_prompt_too_long")
    assert tokenize_rl(tok, messages, len(prompt_ids))[1] == "kept"
