"""In-graph metrics and the multi-view reward against independent references (pytrec_eval, the rbo package, and a
plain reading of SPEC §4)."""

import random
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import pytrec_eval
import rbo

from reasonrank_jax.ranking import (NDCG_ONLY_WEIGHTS, multiview_reward, ndcg_at_k, parse_response,
                                    rank_biased_overlap, recall_at_k, score_response, stack_parsed)


def _pytrec(ranked_docids, relevant, measures=("ndcg_cut_10", "recall_10")):
    if not ranked_docids or not relevant:
        return {m: 0.0 for m in measures}
    run = {"q": {d: float(len(ranked_docids) - i) for i, d in enumerate(ranked_docids)}}
    qrels = {"q": {d: 1 for d in relevant}}
    return pytrec_eval.RelevanceEvaluator(qrels, set(measures)).evaluate(run)["q"]


def test_ndcg_and_recall_match_pytrec_eval():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(0, 20)
        ranked = [f"d{i}" for i in rng.sample(range(40), n)]
        relevant = {f"d{i}" for i in rng.sample(range(40), rng.randint(1, 12))}
        k = rng.choice([1, 5, 10, 20])
        rel_n = np.zeros(20, np.float32)
        valid_n = np.zeros(20, np.float32)
        rel_n[:n] = [d in relevant for d in ranked]
        valid_n[:n] = 1
        rel_n[n:] = 1  # padding must not count even if its relevance slot is garbage
        reference = _pytrec(ranked, relevant, (f"ndcg_cut_{k}", f"recall_{k}"))
        got_ndcg = float(ndcg_at_k(jnp.asarray(rel_n), len(relevant), k, jnp.asarray(valid_n)))
        got_recall = float(recall_at_k(jnp.asarray(rel_n), len(relevant), k, jnp.asarray(valid_n)))
        assert got_ndcg == pytest.approx(reference[f"ndcg_cut_{k}"], abs=1e-6)
        assert got_recall == pytest.approx(reference[f"recall_{k}"], abs=1e-6)
    assert float(ndcg_at_k(jnp.ones(5), 0, 10)) == 0.0 and float(recall_at_k(jnp.ones(5), 0, 10)) == 0.0


@pytest.mark.parametrize("p", [1.0, 0.9, 0.5])
def test_rbo_matches_rbo_package(p):
    rng = random.Random(int(p * 10))
    for _ in range(300):
        s = rng.sample(range(1, 21), rng.randint(0, 20))
        t = rng.sample(range(1, 21), rng.randint(0, 20))
        pad = lambda x: jnp.asarray(x + [0] * (20 - len(x)), jnp.int32)  # noqa: E731
        got = float(rank_biased_overlap(pad(s), pad(t), len(s), len(t), p=p, num_ids=21))
        expected = rbo.RankingSimilarity(s, t).rbo(p=p)
        assert got == pytest.approx(expected, abs=1e-6), (s, t)


# ---------------------------------------------------------------------------------------------- the reward

def reference_reward(response, label, initial_list, relevant_docids, ndcg_only=False):
    """SPEC §4 read plainly, with pytrec_eval for nDCG/Recall and the rbo package for the overlap."""
    match = re.search(r"<think>.*?</think>\s*<answer>(.*?)</answer>", response, re.DOTALL)
    if match is None:
        return -1.0
    pred = [int(x) for x in re.sub(r"\D", " ", match.group(1)).split()]
    gold = [int(x) for x in re.sub(r"\D", " ", label).split()]
    if len(pred) != len(gold) or len(set(pred)) != len(set(gold)):
        return 0.0
    if any(not 1 <= i <= len(initial_list) for i in pred):
        return 0.0
    measures = _pytrec([initial_list[i - 1] for i in pred], set(relevant_docids))
    if ndcg_only:
        return measures["ndcg_cut_10"]
    return measures["ndcg_cut_10"] + 0.2 * measures["recall_10"] + 0.1 * rbo.RankingSimilarity(pred, gold).rbo()


def random_case(rng):
    num = rng.randint(1, 20)
    initial_list = [f"doc{rng.randint(0, 10**6)}-{i}" for i in range(num)]
    label_ids = rng.sample(range(1, num + 1), num if rng.random() < 0.8 else rng.randint(1, num))
    label = " > ".join(f"[{i}]" for i in label_ids)
    pool = initial_list + [f"other{i}" for i in range(5)]
    relevant = rng.sample(pool, rng.randint(0, 6)) if rng.random() < 0.9 else []
    kind = rng.random()
    ids = list(label_ids)
    rng.shuffle(ids)
    if kind < 0.15:
        ids = ids[: rng.randint(0, len(ids))]  # too few
    elif kind < 0.25 and ids:
        ids[rng.randrange(len(ids))] = rng.choice(ids)  # a duplicate
    elif kind < 0.32 and ids:
        ids[rng.randrange(len(ids))] = rng.choice([0, num + 1, num + rng.randint(2, 50), 10**12])  # out of range
    elif kind < 0.38:
        ids = ids + [rng.randint(1, num)]  # one too many
    elif kind < 0.42:
        ids = [rng.randint(0, 25) for _ in range(rng.randint(0, 30))]  # noise
    answer = " > ".join(f"[{i}]" for i in ids)
    if rng.random() < 0.1:
        answer = answer.replace(" > ", rng.choice([", ", " >> ", "\n", " then "]))
    think = rng.choice(["reasoning about [3] and [1]", "", "multi\nline\n<answer>[1]</answer> inside think"])
    form = rng.random()
    if form < 0.75:
        response = f"<think>{think}</think>{rng.choice([' ', '', chr(10), '  ' + chr(10)])}<answer>{answer}</answer>"
    elif form < 0.8:
        response = f"<think>{think}</think> <answer>{answer}"  # unclosed answer
    elif form < 0.85:
        response = f"<answer>{answer}</answer>"  # no think
    elif form < 0.9:
        response = f"<THINK>{think}</THINK> <ANSWER>{answer}</ANSWER>"  # case-sensitive: a format failure
    elif form < 0.95:
        response = f"<think>{think}</think> text between <answer>{answer}</answer>"  # only whitespace allowed
    else:
        response = f"preamble <think>{think}</think>\n<answer>{answer}</answer> trailing [5]"
    return response, label, initial_list, relevant


def test_reward_agrees_with_reference_on_thousands_of_random_responses():
    rng = random.Random(1234)
    cases = [random_case(rng) for _ in range(6000)]
    parsed = stack_parsed([parse_response(*case) for case in cases])
    rewards = np.asarray(jax.jit(jax.vmap(multiview_reward))(parsed))
    ndcg_only = np.asarray(jax.jit(jax.vmap(lambda x: multiview_reward(x, weights=NDCG_ONLY_WEIGHTS)))(parsed))
    expected = np.array([reference_reward(*case) for case in cases])
    expected_ndcg = np.array([reference_reward(*case, ndcg_only=True) for case in cases])
    disagreements = np.flatnonzero(np.abs(rewards - expected) > 1e-5)
    assert disagreements.size == 0, [(cases[i], rewards[i], expected[i]) for i in disagreements[:3]]
    assert np.abs(ndcg_only - expected_ndcg).max() <= 1e-5
    # the random cases really cover every branch
    assert (expected == -1).sum() > 300 and (expected == 0).sum() > 600 and (expected > 0).sum() > 2000


def test_score_response_examples_by_hand():
    initial = ["a", "b", "c"]
    # relevant b ranked first: nDCG 1, recall 1, identical to the label: RBO 1
    assert score_response("<think>t</think> <answer>[2] > [1] > [3]</answer>", "[2] > [1] > [3]", initial,
                          ["b"]) == pytest.approx(1.3)
    # [1,2,3] vs label [2,1,3]: overlaps 0, 2, 3 -> average overlap (0 + 1 + 1) / 3; b at rank 2: 1/log2(3)
    assert score_response("<think>t</think><answer>[1] > [2] > [3]</answer>", "[2] > [1] > [3]", initial, ["b"]) == \
        pytest.approx(1 / np.log2(3) + 0.2 + 0.1 * 2 / 3, abs=1e-6)
    assert score_response("<think>t</think> <answer>[2] > [1] > [0]</answer>", "[2] > [1] > [3]", initial, ["b"]) == 0
    assert score_response("<think>t</think> <answer>[2] > [1] > [4]</answer>", "[2] > [1] > [3]", initial, ["b"]) == 0
    assert score_response("<think>t</think> <answer>[2] > [1]</answer>", "[2] > [1] > [3]", initial, ["b"]) == 0
    assert score_response("<answer>[2] > [1] > [3]</answer>", "[2] > [1] > [3]", initial, ["b"]) == -1
    # empty relevant set: no crash, nDCG = Recall = 0, only the overlap term
    assert score_response("<think>t</think> <answer>[2] > [1] > [3]</answer>", "[2] > [1] > [3]", initial,
                          []) == pytest.approx(0.1)


def test_reward_runs_under_jit_vmap_over_a_group():
    rng = random.Random(7)
    cases = [random_case(rng) for _ in range(16 * 8)]
    parsed = stack_parsed([parse_response(*case) for case in cases])
    grouped = jax.tree_util.tree_map(lambda x: x.reshape(16, 8, *x.shape[1:]), parsed)
    rewards = jax.jit(jax.vmap(jax.vmap(multiview_reward)))(grouped)
    assert rewards.shape == (16, 8)
    expected = np.array([reference_reward(*case) for case in cases]).reshape(16, 8)
    np.testing.assert_allclose(np.asarray(rewards), expected, atol=1e-5)
    # GRPO's advantage from the same in-graph rewards
    advantages = (rewards - rewards.mean(1, keepdims=True)) / (rewards.std(1, keepdims=True) + 1e-6)
    assert np.isfinite(np.asarray(advantages)).all()
