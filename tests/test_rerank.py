"""Sliding windows (hand-computed), the two schedules, and an end-to-end `rerank` with a tiny model (resume included)."""

import json
import os
import random
import subprocess
import sys

import pytest

from reasonrank_jax.errors import InputError
from reasonrank_jax.inference import sliding_windows
from reasonrank_jax.inference.engine import Finished
from reasonrank_jax.inference.rerank import make_query_state, rerank_barrier, rerank_slots


@pytest.mark.parametrize("args, expected", [
    ((0, 100, 20, 10), [(80, 100), (70, 90), (60, 80), (50, 70), (40, 60), (30, 50), (20, 40), (10, 30), (0, 20)]),
    ((0, 15, 15, 10), [(0, 15)]),  # fewer candidates than 20: window = n
    ((0, 25, 20, 10), [(5, 25), (0, 15)]),  # the start is clamped in place, so the loop ends after (0, 15)
    ((0, 20, 20, 10), [(0, 20)]),
    ((0, 40, 20, 20), [(20, 40), (0, 20)]),  # step == window: no overlap
    ((0, 100, 10, 5), [(90 - 5 * i, 100 - 5 * i) for i in range(19)]),  # the leaderboard setting: 19 windows
    ((10, 50, 20, 10), [(30, 50), (20, 40), (10, 30)]),
    ((0, 30, 20, 10), [(10, 30), (0, 20)]),  # next start -10: -10 + 10 == 0 stops the loop
    ((0, 21, 20, 10), [(1, 21), (0, 11)]),
    ((0, 100, 20, 30), [(80, 100), (50, 70), (20, 40), (0, 10)]),  # step > window leaves gaps, as the original does
    ((0, 5, 5, 10), [(0, 5)]),
    ((0, 1, 1, 10), [(0, 1)]),
    ((0, 10, 20, 10), []),  # why short lists need window = n: start -10 + step == 0 ends the loop at once
    ((5, 5, 20, 10), []),
    ((0, 0, 1, 1), []),
])
def test_sliding_windows(args, expected):
    assert sliding_windows(*args) == expected


def test_sliding_windows_module_and_bad_arguments():
    from reasonrank_jax.inference.windows import sliding_windows as from_module

    assert from_module is sliding_windows
    for window, step in ((0, 10), (20, 0), (-1, 5)):
        with pytest.raises(ValueError):
            sliding_windows(0, 100, window, step)


@pytest.mark.parametrize("n, top, windows, last, reranked", [
    (100, 100, 9, (0, 20), 100), (150, 100, 9, (0, 20), 100), (15, 100, 1, (0, 15), 15), (25, 100, 2, (0, 15), 25),
    (1, 100, 1, (0, 1), 1), (30, 20, 1, (0, 20), 20), (0, 100, 0, None, 0)])
def test_query_state_window_and_tail(n, top, windows, last, reranked):
    docids = [f"d{i}" for i in range(n)]
    state = make_query_state("q", "query", docids, window=20, step=10, top=top)
    assert len(state.windows) == windows and (state.windows[-1] if state.windows else None) == last
    assert state.docids == docids[:reranked] and state.tail == docids[reranked:]
    assert state.final_ranking() == docids


class FakePrompter:
    """Prompt = the window's docids; the 'model' ranks them by a hash of (query, docid)."""

    def prompt_ids(self, state, window):
        return [hash((state.query, d)) % 10**6 for d in state.docids[window[0]:window[1]]] + [len(state.docids)]

    def decode(self, tokens):
        return "<think>x</think> <answer>" + " > ".join(f"[{t}]" for t in tokens) + "</answer>"


class FakeEngine:
    """Finishes requests in an order that depends on a per-request 'trace length'; output depends on the prompt only."""

    def __init__(self, num_slots, seed):
        self.num_slots, self.rng, self.active, self.queue = num_slots, random.Random(seed), [], []
        self.priority = {}

    def submit(self, request_id, prompt_ids, max_new_tokens=None, priority=0):
        self.priority[request_id] = priority
        self.queue.append((request_id, prompt_ids))
        self.queue.sort(key=lambda item: -self.priority[item[0]])  # stable: FIFO among equals

    def has_work(self):
        return bool(self.queue or self.active)

    def step(self):
        while self.queue and len(self.active) < self.num_slots:
            request_id, prompt = self.queue.pop(0)
            self.active.append([request_id, prompt, self.rng.randint(1, 5)])
        finished = []
        for item in list(self.active):
            item[2] -= 1
            if item[2] == 0:
                self.active.remove(item)
                hashes = item[1][:-1]
                order = sorted(range(len(hashes)), key=lambda i: hashes[i])  # the answer: 1-based ids
                finished.append(Finished(item[0], [i + 1 for i in order], len(item[1])))
        return finished


def _states(seed):
    rng = random.Random(seed)
    return [make_query_state(f"q{i}", f"query {i}", [f"d{i}_{j}" for j in range(rng.randint(1, 60))])
            for i in range(12)]


def test_slot_scheduler_and_barrier_give_identical_rankings():
    results = []
    for schedule, seed in ((rerank_slots, 1), (rerank_barrier, 2), (rerank_slots, 3)):
        done, windows = {}, []
        states = _states(0)
        schedule(FakeEngine(3, seed), states, FakePrompter(), on_window=windows.append,
                 on_query_done=lambda s, done=done: done.setdefault(s.qid, s.final_ranking()))
        assert set(done) == {s.qid for s in states}
        assert len(windows) == sum(len(s.windows) for s in states)
        for state in states:
            assert sorted(done[state.qid]) == sorted(d for d in _states(0)[int(state.qid[1:])].docids)
        results.append(done)
    assert results[0] == results[1] == results[2]


def test_slot_scheduler_gives_free_slots_to_the_query_with_most_windows_left():
    """One slot, all three queries in flight, with 1, 9 and 5 windows (10, 100 and 60 candidates at 20/10): the
    100-candidate query b runs alone until its windows left fall to c's 5, then they alternate (equal priorities in
    submission order: c's fifth-from-last window waited longer than b's); at one window left each, a (queued since
    the start) goes first."""
    states = [make_query_state(qid, qid, [f"{qid}{j}" for j in range(n)]) for qid, n in
              (("a", 10), ("b", 100), ("c", 60))]
    assert [len(s.windows) for s in states] == [1, 9, 5]
    order = []
    engine = FakeEngine(1, 0)
    engine.rng.randint = lambda low, high: 1  # every trace takes one step
    rerank_slots(engine, states, FakePrompter(), on_window=lambda record: order.append(record["qid"]),
                 max_in_flight=3)
    assert order == ["b"] * 4 + ["c", "b"] * 4 + ["a", "c", "b"]


# ---------------------------------------------------------------------------------------------- end to end

def _rerank(root, out, *extra):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    cmd = [sys.executable, "-m", "reasonrank_jax", "rerank", "--model", str(root / "model"), "--run",
           str(root / "run.trec"), "--corpus", str(root / "corpus.jsonl"), "--queries", str(root / "queries.jsonl"),
           "--out", str(out), "--max-new-tokens", "6", "--slots", "2", "--dtype", "float32", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _read_trec(path):
    lines = [line.split() for line in open(path)]
    by_qid = {}
    for qid, _, docid, rank, score, _ in lines:
        by_qid.setdefault(qid, []).append((int(rank), float(score), docid))
    return by_qid


def test_end_to_end_rerank_resume_and_schedulers(tiny_reranker, tmp_path):
    root = tiny_reranker
    result = _rerank(root, tmp_path / "a", "--eval", str(root / "qrels.txt"))
    assert result.returncode == 0, result.stderr[-2000:]
    run = _read_trec(tmp_path / "a" / "run.trec")
    assert set(run) == {"q0", "q1", "q2"}
    for qid, rows in run.items():
        assert sorted(d for _, _, d in rows) == sorted(f"{qid}-d{j}" for j in range(25))  # each candidate once
        assert [r for r, _, _ in rows] == list(range(1, 26))
        scores = [s for _, s, _ in rows]
        assert all(a > b for a, b in zip(scores, scores[1:]))
    windows = [json.loads(line) for line in open(tmp_path / "a" / "windows.jsonl")]
    assert len(windows) == 6 and [w["window"] for w in windows if w["qid"] == "q0"] == [[5, 25], [0, 15]]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["queries"] == 3 and summary["windows"] == 6
    assert summary["tokens_out"] == sum(w["tokens_out"] for w in windows)
    assert "first stage" in result.stdout and "reranked" in result.stdout

    barrier = _rerank(root, tmp_path / "b", "--scheduler", "barrier")
    assert barrier.returncode == 0, barrier.stderr[-2000:]
    assert (tmp_path / "b" / "run.trec").read_text() == (tmp_path / "a" / "run.trec").read_text()

    # Resume: keep the first finished query and a torn second line, drop the outputs, run again.
    done_lines = (tmp_path / "a" / "done.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "a" / "done.jsonl").write_text(done_lines[0] + done_lines[1][:20])
    (tmp_path / "a" / "run.trec").unlink()
    resumed = _rerank(root, tmp_path / "a")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "1 already done" in resumed.stdout and "4 windows to run" in resumed.stdout
    assert (tmp_path / "a" / "run.trec").read_text() == (tmp_path / "b" / "run.trec").read_text()
    assert len((tmp_path / "a" / "windows.jsonl").read_text().splitlines()) == 6
    assert len((tmp_path / "a" / "done.jsonl").read_text().splitlines()) == 3


class _Killed(Exception):
    pass


def _cli_args(root, out, *extra):
    """The rerank config the command line would give (parsed and checked by the CLI's own code)."""
    from reasonrank_jax.cli import build_parser, resolve_config

    parser, leaves = build_parser()
    args = parser.parse_args(["rerank", "--model", str(root / "model"), "--run", str(root / "run.trec"), "--corpus",
                              str(root / "corpus.jsonl"), "--queries", str(root / "queries.jsonl"), "--out",
                              str(out), "--max-new-tokens", "6", "--slots", "2", "--dtype", "float32", *extra])
    return resolve_config(leaves[("rerank",)][0], args, [])


def test_resume_after_a_kill_mid_job_gives_the_uninterrupted_run(tiny_reranker, tmp_path, monkeypatch):
    """Kill the job (an exception out of the scheduler) right after its first query is logged, with windows of the
    other queries already written; the resumed job redoes only those and writes the same run."""
    from reasonrank_jax.inference import cli, rerank

    root = tiny_reranker
    assert cli.main(_cli_args(root, tmp_path / "full")) == 0
    real_slots = rerank.rerank_slots

    def killed_after_first_query(engine, states, prompter, on_window=None, on_query_done=None, **kw):
        def log_then_die(state):
            on_query_done(state)
            raise _Killed

        real_slots(engine, states, prompter, on_window=on_window, on_query_done=log_then_die, **kw)

    monkeypatch.setattr(rerank, "rerank_slots", killed_after_first_query)
    with pytest.raises(_Killed):
        cli.main(_cli_args(root, tmp_path / "resumed"))
    monkeypatch.setattr(rerank, "rerank_slots", real_slots)
    assert len((tmp_path / "resumed" / "done.jsonl").read_text().splitlines()) == 1
    assert not (tmp_path / "resumed" / "run.trec").exists()
    windows_before = [json.loads(line) for line in open(tmp_path / "resumed" / "windows.jsonl")]
    assert len(windows_before) > 2  # the slot scheduler had also run windows of unfinished queries

    assert cli.main(_cli_args(root, tmp_path / "resumed")) == 0
    assert (tmp_path / "resumed" / "run.trec").read_text() == (tmp_path / "full" / "run.trec").read_text()
    windows = [json.loads(line) for line in open(tmp_path / "resumed" / "windows.jsonl")]
    assert sorted((w["qid"], tuple(w["window"])) for w in windows) == sorted(
        (q, w) for q in ("q0", "q1", "q2") for w in ((5, 25), (0, 15)))
    full = {(w["qid"], tuple(w["window"])): w for w in map(json.loads, open(tmp_path / "full" / "windows.jsonl"))}
    assert all(full[(w["qid"], tuple(w["window"]))] == w for w in windows)

    # The same --out with settings that change rankings is refused.
    with pytest.raises(InputError, match="window=20, not 10"):
        cli.main(_cli_args(root, tmp_path / "resumed", "--window", "10"))


def test_rerank_prompt_longer_than_the_cache_is_bad_input(tiny_reranker, tmp_path):
    from reasonrank_jax.inference import cli

    with pytest.raises(InputError, match="--max-len"):
        cli.main(_cli_args(tiny_reranker, tmp_path / "o", "--max-len", "64"))


def test_rerank_bad_inputs_exit_2_with_one_line(tiny_reranker, tmp_path):
    root = tiny_reranker
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(line for line in open(root / "corpus.jsonl") if '"q1-d7"' not in line))
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    base = [sys.executable, "-m", "reasonrank_jax", "rerank", "--model", str(root / "model"), "--run",
            str(root / "run.trec"), "--queries", str(root / "queries.jsonl"), "--out", str(tmp_path / "o")]
    result = subprocess.run(base + ["--corpus", str(corpus)], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "q1-d7" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    corpus.write_text('{"_id": "x", "text": "fine"}\n{broken\n')
    result = subprocess.run(base + ["--corpus", str(corpus)], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and f"{corpus}:2" in result.stderr and "Traceback" not in result.stderr
    result = subprocess.run(base + ["--corpus", str(root / "corpus.jsonl"), "--window", "0"], capture_output=True,
                            text=True, env=env)
    assert result.returncode == 2 and "--window" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    queries = tmp_path / "queries.tsv"
    queries.write_text("q0\tfirst\nq2\tthird\n")
    result = subprocess.run(base[:-4] + ["--queries", str(queries), "--out", str(tmp_path / "o"), "--corpus",
                                         str(root / "corpus.jsonl")], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "'q1'" in result.stderr and str(queries) in result.stderr
