"""Metrics against pytrec_eval (the reference) on random runs with ties and on the real BRIGHT runs."""

import math
import random
from pathlib import Path

import numpy as np
import pytest

from reasonrank_jax.errors import InputError
from reasonrank_jax.eval import bright, metrics, trec

pytrec_eval = pytest.importorskip("pytrec_eval")

BRIGHT = Path("/work/shared/data/bright")
# Everything we compute, in pytrec_eval's measure syntax.
REFERENCE_MEASURES = {"ndcg_cut.1,5,10,20,100", "recall.10,20,100", "P.1,5,10", "map", "recip_rank", "ndcg"}
OUR_MEASURES = ["ndcg_cut.1,5,10,20,100", "recall.10,20,100", "P.1,5,10", "map", "recip_rank", "ndcg", "mrr.10"]


def _assert_matches_pytrec_eval(run, qrels, tolerance=1e-9):
    # trec_eval sizes an array by the query's largest relevance + 1 and crashes when all relevances are
    # negative (a negative size); such queries have no relevant or gain-carrying document: all zeros.
    negative = {qid for qid, judged in qrels.items() if judged and max(judged.values()) < 0 and qid in run}
    reference = pytrec_eval.RelevanceEvaluator(
        {qid: judged for qid, judged in qrels.items() if qid not in negative}, REFERENCE_MEASURES).evaluate(run)
    ours = metrics.evaluate(run, qrels, OUR_MEASURES)
    assert set(ours) == set(reference) | negative
    for qid in negative:
        assert set(ours[qid].values()) == {0.0}
    for qid, expected in reference.items():
        assert set(ours[qid]) == set(expected) | {"mrr_10"}
        for name, value in expected.items():
            assert ours[qid][name] == pytest.approx(value, abs=tolerance), (qid, name)
        # MRR@10 is recip_rank when the first relevant document is within the top 10 (1/r >= 0.1)
        rr = expected["recip_rank"]
        assert ours[qid]["mrr_10"] == pytest.approx(rr if rr >= 0.1 - 1e-12 else 0.0, abs=tolerance)
    return ours, reference


def _random_case(seed):
    rng = random.Random(seed)
    docids = [f"d{i}" for i in range(60)] + ["D1", "d1 x", "é", "z", "10", "9", "a/b_1.txt"]
    run, qrels = {}, {}
    for q in range(40):
        qid = f"q{q}"
        pool = rng.sample(docids, rng.randint(0, len(docids)))
        levels = [0.0, 0.5, 1.0] if rng.random() < 0.5 else [rng.uniform(-1, 1) for _ in range(3)]
        if q % 7 != 3:  # some queries only in qrels
            run[qid] = {d: rng.choice(levels) for d in pool}  # heavy ties; may be empty
        if q % 5 != 2:  # some queries only in the run
            judged = rng.sample(docids, rng.randint(0, 25))
            qrels[qid] = {d: rng.choice([-2, -1, 0, 0, 1, 1, 2, 3]) for d in judged}  # may be empty
    run["q0"], qrels["q0"] = {}, {"d1": 1}  # judged query with an empty ranking
    qrels["q1"] = {"d1": -1, "d2": -2}  # only negative judgements
    return run, qrels


@pytest.mark.parametrize("seed", range(25))
def test_random_runs_with_ties_match_pytrec_eval(seed):
    run, qrels = _random_case(seed)
    ours, _ = _assert_matches_pytrec_eval(run, qrels)
    assert list(ours) == [q for q in run if qrels.get(q)]  # run order, judged queries only


def test_long_runs_are_not_truncated_at_1000():
    rng = random.Random(1)
    run = {"q": {f"d{i}": float(rng.randrange(300)) for i in range(1600)}}
    qrels = {"q": {f"d{i}": rng.choice([0, 1, 2]) for i in range(0, 1600, 9)}}
    ours = metrics.evaluate(run, qrels, ["recall.1000,1500", "map", "ndcg", "P.1500"])
    reference = pytrec_eval.RelevanceEvaluator(qrels, {"recall.1000,1500", "map", "ndcg", "P.1500"}).evaluate(run)
    for name, value in reference["q"].items():
        assert ours["q"][name] == pytest.approx(value, abs=1e-9)


def test_hand_computed_case():
    # ranking (score desc, docid desc on ties): d(rel -1), e(unjudged), c(2), b(0), a(1)
    run = {"q": {"a": 0.5, "b": 0.5, "c": 0.5, "d": 0.9, "e": 0.5}}
    qrels = {"q": {"a": 1, "b": 0, "c": 2, "d": -1}}
    got = metrics.evaluate(run, qrels, ["ndcg_cut.3", "P.5", "recall.3", "map", "recip_rank", "mrr.2"])["q"]
    ideal = 2 + 1 / math.log2(3)
    assert got["ndcg_cut_3"] == pytest.approx((2 / math.log2(4)) / ideal)
    assert got["P_5"] == pytest.approx(2 / 5)
    assert got["recall_3"] == pytest.approx(1 / 2)
    assert got["map"] == pytest.approx((1 / 3 + 2 / 5) / 2)
    assert got["recip_rank"] == pytest.approx(1 / 3)
    assert got["mrr_2"] == 0.0


def test_default_cutoffs_are_pytrec_evals():
    run, qrels = {"q": {"a": 1.0}}, {"q": {"a": 1}}
    for family in ("ndcg_cut", "P", "recall"):
        expected = set(pytrec_eval.RelevanceEvaluator(qrels, {family}).evaluate(run)["q"])
        assert set(metrics.evaluate(run, qrels, [family])["q"]) == expected


@pytest.mark.parametrize("spelling, canonical", [
    (["ndcg_cut.10"], ["ndcg_cut_10"]), (["ndcg_cut_10"], ["ndcg_cut_10"]), (["nDCG@10"], ["ndcg_cut_10"]),
    (["ndcg_cut.1,5,recall.100"], ["ndcg_cut_1", "ndcg_cut_5", "recall_100"]),
    (["P.5", "P_5", "p@5"], ["P_5"]), (["mrr@10", "MRR"], ["mrr_10"]), (["MAP", "recip_rank"], ["map", "recip_rank"]),
    (["ndcg"], ["ndcg"]), (["recall"], [f"recall_{k}" for k in metrics.DEFAULT_CUTOFFS]),
])
def test_parse_metrics(spelling, canonical):
    assert metrics.parse_metrics(spelling) == canonical


@pytest.mark.parametrize("bad", ["foo", "map.10", "ndcg_cut.0", "10", "bpref"])
def test_unknown_measures_are_input_errors(bad):
    with pytest.raises(InputError):
        metrics.parse_metrics([bad])


def test_dotted_names():
    assert metrics.dotted_name("ndcg_cut_10") == "ndcg_cut.10"
    assert metrics.dotted_name("recip_rank") == "recip_rank"
    assert metrics.dotted_name("mrr_10") == "mrr.10"


def test_aggregate_and_drop_excluded():
    run, qrels = _random_case(3)
    ours = metrics.evaluate(run, qrels, ["ndcg_cut.10", "map"])
    reference = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "map"}).evaluate(run)
    means = metrics.aggregate(ours, ["ndcg_cut_10", "map"])
    for name in ("ndcg_cut_10", "map"):
        assert means[name] == pytest.approx(np.mean([v[name] for v in reference.values()]), abs=1e-12)
    assert math.isnan(metrics.aggregate({}, ["map"])["map"])

    excluded = {"q0": set(list(run["q0"])[:3]), "absent": {"x"}}
    dropped = metrics.drop_excluded(run, excluded)
    assert set(dropped) == set(run)
    assert set(dropped["q0"]) == set(run["q0"]) - excluded["q0"]
    assert dropped["q1"] == run["q1"] and dropped["q1"] is not run["q1"]


@pytest.mark.skipif(not BRIGHT.is_dir(), reason="BRIGHT data not present")
def test_real_reasonir_runs_match_pytrec_eval_and_the_paper():
    ndcg10 = []
    for dataset in bright.DATASETS:
        examples_path, run_path = bright.bright_paths(BRIGHT, dataset)
        run = trec.read_run(run_path)
        qrels = bright.load_bright_examples(examples_path).qrels
        ours, _ = _assert_matches_pytrec_eval(run, qrels)
        assert len(ours) == len(run)
        ndcg10.append(metrics.aggregate(ours, ["ndcg_cut.10"])["ndcg_cut_10"])
    # The ReasonRank paper reports ReasonIR alone at 30.59 nDCG@10 averaged over the 12 datasets.
    assert 100 * np.mean(ndcg10) == pytest.approx(30.59, abs=0.005)
