"""The synthetic learning task (reasonrank_jax.data.synthetic): determinism, splits, headroom, exact prompts, its
tokenizer and the files the CLI reads."""

import json
import os

import numpy as np
import pytest

from reasonrank_jax.data import synthetic as syn

SMALL = syn.SyntheticTask(seed=3, num_queries=40)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return syn.build_tokenizer(SMALL, tmp_path_factory.mktemp("synthetic") / "tokenizer")


@pytest.fixture(scope="module")
def tok(tok_dir):
    from reasonrank_jax.text import load_tokenizer

    return load_tokenizer(tok_dir)


def test_deterministic_from_seed():
    first = syn.make_corpus(SMALL), syn.sft_records(SMALL, "all"), syn.rl_records(SMALL, "all")
    syn.generate.cache_clear()
    again = syn.make_corpus(syn.SyntheticTask(seed=3, num_queries=40)), syn.sft_records(SMALL, "all"), \
        syn.rl_records(SMALL, "all")
    assert first == again
    other = syn.make_corpus(syn.SyntheticTask(seed=4, num_queries=40))
    assert other[0] != first[0][0] and other[1] != first[0][1]
    # query i depends only on (seed, i): a larger task extends a smaller one
    bigger = syn.make_corpus(syn.SyntheticTask(seed=3, num_queries=50))
    assert all(bigger[k][q] == first[0][k][q] for k in (0, 2, 3) for q in first[0][0])


def test_corpus_shape():
    queries, corpus, qrels, run = syn.make_corpus(SMALL)
    assert len(queries) == SMALL.num_queries and set(qrels) == set(run) == set(queries)
    for qid, ranked in run.items():
        assert len(ranked) == len(set(ranked)) == SMALL.passages_per_query
        assert set(ranked) == set(qrels[qid]) <= set(corpus)
        n_rel = sum(1 for g in qrels[qid].values() if g > 0)
        assert SMALL.num_relevant[0] <= n_rel <= SMALL.num_relevant[1]
        assert 2 <= len(queries[qid].split()) <= 3
    for doc in corpus.values():
        assert doc["title"] == "" and 3 <= len(doc["text"].split()) <= 9
    # true relevance = un-negated query words
    data = syn.generate(SMALL)
    for q in data.queries[:5]:
        for p in q.passages.values():
            assert p.grade == sum(1 for u in p.units if u in q.words)
            assert p.lexical == sum(1 for u in p.units if u.split()[-1] in q.words)


def test_splits_disjoint_by_query():
    data = syn.generate(SMALL)
    train, heldout = syn.split_qids(data, "train"), syn.split_qids(data, "heldout")
    assert not set(train) & set(heldout)
    assert set(train) | set(heldout) == {q.qid for q in data.queries}
    assert len(heldout) == round(SMALL.heldout_fraction * SMALL.num_queries)
    sft_train, sft_held = syn.sft_records(SMALL, "train"), syn.sft_records(SMALL, "heldout")
    assert {r["qid"] for r in sft_train} == set(train) and {r["qid"] for r in sft_held} == set(heldout)
    assert {r["qid"] for r in syn.rl_records(SMALL, "train")} <= set(train)
    windows = len(syn._windows(SMALL.passages_per_query, SMALL.window, SMALL.step))
    assert len(sft_train) == windows * len(train)
    with pytest.raises(ValueError):
        syn.sft_records(SMALL, "validation")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_teacher_between_first_stage_and_oracle(seed):
    """nDCG@10 against the true qrels: first stage < teacher < oracle, with room on both sides."""
    task = syn.SyntheticTask(seed=seed, num_queries=120)
    ref = syn.reference_ndcg(task, "all")
    print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in ref.items() if k != "num_queries"))
    assert ref["first_stage"] + 0.08 < ref["teacher"] < ref["oracle_windows"] - 0.12
    assert ref["oracle"] == 1.0 and ref["oracle_windows"] > 0.99
    assert ref["first_stage_window"] + 0.08 < ref["teacher_window"] < ref["oracle_window"] - 0.1
    # the teacher's gap is systematic: an un-blinded, noise-free teacher is (near) perfect
    fixed = syn.reference_ndcg(syn.SyntheticTask(seed=seed, num_queries=120, teacher_negation_blind=0.0,
                                                 teacher_swap_prob=0.0), "all")
    assert fixed["teacher"] > 0.99 and fixed["teacher_window"] == 1.0


@pytest.mark.parametrize("ties", ["window", "random"])
def test_teacher_tie_order(ties):
    """A blind, swap-free teacher ranks by lexical matches; matched passages that tie come in window order, or
    (``random``) in both orders across windows; unmatched passages always keep window order."""
    task = syn.SyntheticTask(seed=1, num_queries=60, teacher_negation_blind=1.0, teacher_swap_prob=0.0,
                             teacher_ties=ties)
    reversed_ties = checked_ties = 0
    for q in syn.generate(task).queries:
        for w in q.teacher_windows:
            counts = [q.passages[d].lexical for d in w.final_list]
            assert counts == sorted(counts, reverse=True)
            position = {d: i for i, d in enumerate(w.initial_list)}
            unmatched = [position[d] for d in w.final_list if q.passages[d].lexical == 0]
            assert unmatched == sorted(unmatched)
            for a, b in zip(w.final_list, w.final_list[1:]):
                if q.passages[a].lexical == q.passages[b].lexical > 0:
                    checked_ties += 1
                    reversed_ties += position[a] > position[b]
    assert checked_ties > 50
    if ties == "window":
        assert reversed_ties == 0
    else:  # a fair coin per tied pair: far from 0 and from all
        assert 0.3 < reversed_ties / checked_ties < 0.7


def test_labels_replay_the_teacher_pass():
    """The records' windows are exactly what a reranker that answers like the teacher sees: replaying the outputs
    through the sliding window (parsed as at inference) gives the teacher's run."""
    from reasonrank_jax.text.parsing import parse_permutation

    records = {(r["qid"], tuple(r["initial_list"])): r for r in syn.sft_records(SMALL, "heldout")}
    run = syn.simulate_rerank(SMALL, "heldout", lambda qid, query, ids: parse_permutation(
        records[(qid, tuple(ids))]["output"], len(ids)))
    data = syn.generate(SMALL)
    for qid, scores in run.items():
        assert sorted(scores, key=scores.get, reverse=True) == list(data.query(qid).teacher_final)
    for r in records.values():
        perm = parse_permutation(r["output"], len(r["initial_list"]))
        assert [r["initial_list"][i] for i in perm] == r["final_list"]


def test_record_contents():
    from reasonrank_jax.text.prompts import REASONING_SYSTEM

    data = syn.generate(SMALL)
    for r in syn.sft_records(SMALL, "heldout"):
        q = data.query(r["qid"])
        n = len(r["initial_list"])
        assert r["system"] == REASONING_SYSTEM and r["dataset"] == syn.DATASET
        assert r["instruction"].startswith(f"I will provide you with {n} passages")
        assert f"search query: {q.text}.\n" in r["instruction"]
        assert r["output"].startswith("<think>[1] ") and syn.answer_is_valid_permutation(r["output"], n)
        passages = [q.passages[d] for d in r["initial_list"]]
        assert r["output"].split("</think>")[0] == "<think>" + syn.think_text(q.words, passages)
        assert r["grades"] == [q.passages[d].grade for d in r["initial_list"]]
    for row in syn.rl_records(SMALL, "heldout"):
        q = data.query(row["qid"])
        assert [m["role"] for m in row["prompt"]] == ["system", "user"]
        assert row["relevant_docids"] and all(q.passages[d].grade > 0 for d in row["relevant_docids"])
        assert {d for d in row["initial_list"] if q.passages[d].grade > 0} == set(row["relevant_docids"])
        ids = [int(t) for t in row["label"].replace("[", " ").replace("]", " ").replace(">", " ").split()]
        assert [row["initial_list"][i - 1] for i in ids] == row["final_list"]


def test_think_text():
    P = syn.Passage
    passages = [P("a", ("apple", "stone"), ("apple",), 1, 1), P("b", ("the", "cloud"), (), 0, 0),
                P("c", ("no river", "apple"), ("no river", "apple"), 1, 2)]
    assert syn.think_text(("apple", "river"), passages) == "[1] apple. [2] none. [3] no river, apple."
    assert syn.think_text(("apple", "river", "tiger"), passages, "by_word") == \
        "Matches. apple: [1], [3]. river: no [3]. tiger: none."
    assert syn.think_text(("apple", "river"), passages, "copy_match") == \
        "[1] apple stone: apple. [2] the cloud: none. [3] no river apple: no river, apple."
    assert syn.think_text(("apple", "river"), passages, "copy_topic_match") == \
        "[1] apple stone: apple. [2] cloud: none. [3] no river apple: no river, apple."
    with pytest.raises(ValueError):
        syn.think_text(("apple",), passages, "free")
    other = syn.sft_records(syn.SyntheticTask(seed=3, num_queries=40, think_style="by_word"), "heldout")
    assert other[0]["output"].startswith("<think>Matches. ")
    # the template changes the reasoning only: same prompts and rankings
    assert [(r["instruction"], r["final_list"]) for r in other] == \
        [(r["instruction"], r["final_list"]) for r in syn.sft_records(SMALL, "heldout")]


def test_answer_is_valid_permutation():
    ok = "<think>[1] apple.</think> <answer>[2] > [1] > [3]</answer>"
    assert syn.answer_is_valid_permutation(ok, 3)
    assert syn.answer_is_valid_permutation("<think>x</think><answer>[2]>[1]>[3]</answer>", 3)
    assert not syn.answer_is_valid_permutation(ok, 4)                                  # one missing
    assert not syn.answer_is_valid_permutation(ok.replace("[3]", "[2]"), 3)            # duplicate
    assert not syn.answer_is_valid_permutation(ok.replace("[3]", "[4]"), 3)            # out of range
    assert not syn.answer_is_valid_permutation(ok.replace("[3]", "[0]"), 3)
    assert not syn.answer_is_valid_permutation("<answer>[2] > [1] > [3]</answer>", 3)  # no think
    assert not syn.answer_is_valid_permutation(ok.replace("</answer>", ""), 3)         # unclosed
    assert not syn.answer_is_valid_permutation(ok.upper(), 3)                          # tags are case-sensitive


def test_window_ndcg():
    ids, grades = ["a", "b", "c", "d"], [0, 2, 0, 1]
    assert syn.window_ndcg([1, 3, 0, 2], ids, grades) == 1.0
    assert syn.window_ndcg("<think></think> <answer>[2] > [4] > [1] > [3]</answer>", ids, grades) == 1.0
    assert 0 < syn.window_ndcg("garbage", ids, grades) < 1.0  # unparsed: the window keeps its order
    assert syn.window_ndcg([0, 1, 2, 3], ids, [0, 0, 0, 0]) == 0.0


def test_prompts_equal_build_prompt(tok):
    """Records built with the task's tokenizer, with the default stand-in, and build_prompt all agree."""
    from reasonrank_jax.text import build_prompt, render_messages

    data = syn.generate(SMALL)
    with_tok = syn.sft_records(SMALL, "heldout", tok)
    assert with_tok == syn.sft_records(SMALL, "heldout")
    rl = syn.rl_records(SMALL, "heldout", tok)
    assert rl == syn.rl_records(SMALL, "heldout")
    for r in with_tok:
        q = data.query(r["qid"])
        passages = [{"docid": d, "title": "", "text": q.passages[d].text} for d in r["initial_list"]]
        messages = [{"role": "system", "content": r["system"]}, {"role": "user", "content": r["instruction"]}]
        assert render_messages(tok, messages) == build_prompt(tok, q.text, passages)
    for row in rl[:5]:
        q = data.query(row["qid"])
        passages = [{"text": q.passages[d].text} for d in row["initial_list"]]
        assert render_messages(tok, row["prompt"]) == build_prompt(tok, q.text, passages)


def test_tokenizer(tok_dir, tok):
    from transformers import AutoTokenizer

    from reasonrank_jax.text import eos_token_ids, parse_permutation

    auto = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    assert len(auto) < 500 and auto.eos_token == "<|im_end|>" and auto.pad_token == "<|endoftext|>"
    assert [auto.convert_tokens_to_ids(t) for t in syn.SPECIAL_TOKENS] == [0, 1, 2]
    assert eos_token_ids(auto) == [2, 0]
    # the same tokenizer for every task: the protocol and the word lists decide its vocabulary
    assert syn.tokenizer_vocab() == auto.get_vocab()
    for word in (*syn.TOPIC_WORDS, *syn.FILLER_WORDS, syn.NEGATION, syn.NO_MENTION):
        assert len(auto.tokenize(" " + word)) == 1, word
    chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert auto.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == \
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    for r in syn.sft_records(SMALL, "all", auto):
        messages = [{"role": "system", "content": r["system"]}, {"role": "user", "content": r["instruction"]},
                    {"role": "assistant", "content": r["output"]}]
        full = auto.apply_chat_template(messages, tokenize=False)
        assert auto.decode(auto(full, add_special_tokens=False)["input_ids"]) == full  # exact round trip
        decoded = auto.decode(auto(r["output"], add_special_tokens=False)["input_ids"])
        n = len(r["initial_list"])
        assert decoded == r["output"] and parse_permutation(decoded, n) == parse_permutation(r["output"], n)
    # any ASCII text round-trips; digits are single tokens, as with Qwen2.5
    text = "Zebra #42: [12] > [3] (i.e., 99%)\twith {braces}\n\n"
    assert auto.decode(auto(text, add_special_tokens=False)["input_ids"]) == text
    assert [t for t in auto.tokenize("[12]") if t.isdigit()] == ["1", "2"]
    assert auto.decode(auto("café", add_special_tokens=False)["input_ids"]) == "caf"  # other characters drop


def test_tokenizer_next_to_a_qwen2_config(tok_dir, tmp_path):
    """transformers loads any tokenizer next to a `model_type: qwen2` config.json as Qwen2Tokenizer, rebuilt from
    tokenizer.json's vocab and merges with Qwen2's own pre-tokenizer and decoder: it must behave the same."""
    import shutil

    from transformers import AutoTokenizer, Qwen2Config

    from reasonrank_jax.text import load_tokenizer

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tok_dir, ckpt)
    Qwen2Config(vocab_size=512, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1).save_pretrained(ckpt)
    alone, beside = AutoTokenizer.from_pretrained(tok_dir), load_tokenizer(ckpt)
    assert type(beside).__name__ == "Qwen2Tokenizer"
    assert beside.eos_token_id == alone.eos_token_id == 2 and beside.pad_token_id == 0 and len(beside) == len(alone)
    for r in syn.sft_records(SMALL, "heldout")[:10]:
        messages = [{"role": "system", "content": r["system"]}, {"role": "user", "content": r["instruction"]},
                    {"role": "assistant", "content": r["output"]}]
        full = alone.apply_chat_template(messages, tokenize=False)
        assert beside.apply_chat_template(messages, tokenize=False) == full
        ids = alone(full, add_special_tokens=False)["input_ids"]
        assert beside(full, add_special_tokens=False)["input_ids"] == ids and beside.decode(ids) == full


def test_tokenize_sft_and_lengths(tok):
    from reasonrank_jax.data.stream import loss_mask, tokenize_rl, tokenize_sft

    for r in syn.sft_records(SMALL, "heldout", tok)[:20]:
        ids, prompt_length, status = tokenize_sft(tok, r["system"], r["instruction"], r["output"], 1024)
        assert status == "kept"
        messages = [{"role": "system", "content": r["system"]}, {"role": "user", "content": r["instruction"]},
                    {"role": "assistant", "content": r["output"]}]
        whole = tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
        assert list(ids) == whole  # tokenizing prompt and response apart = tokenizing the whole
        response = tok.decode(ids[prompt_length:])
        assert response == r["output"] + "<|im_end|>\n"
        assert loss_mask(prompt_length, len(ids), len(ids) + 4).sum() == len(ids) - prompt_length
    for row in syn.rl_records(SMALL, "heldout", tok)[:5]:
        prompt_ids, status = tokenize_rl(tok, row["prompt"], 1024)
        assert status == "kept" and tok.decode(prompt_ids).endswith("<|im_start|>assistant\n")
    lengths = syn.token_lengths(SMALL, tok, "all")
    print("token lengths:", json.dumps(lengths))
    assert lengths["total"]["max"] < 420 and lengths["prompt"]["max"] < 300 and lengths["response"]["max"] < 130


def test_write_files_readable(tmp_path):
    import pyarrow.parquet as pq

    from reasonrank_jax.data.records import RawTexts, Report, read_raw_rows
    from reasonrank_jax.eval import read_qrels, read_run, read_run_lists
    from reasonrank_jax.eval.metrics import aggregate, evaluate
    from reasonrank_jax.inputs import read_corpus, read_queries

    paths = syn.write_files(SMALL, tmp_path / "out")
    names = {"queries.jsonl", "corpus.jsonl", "qrels.trec", "first_stage.trec", "first_stage_train.trec",
             "first_stage_heldout.trec", "teacher_heldout.trec", "sft_train.json", "sft_heldout.json",
             "rl_train.parquet", "raw/training_data_all.jsonl", "raw/id_query/synthetic.jsonl",
             "raw/id_doc/synthetic.jsonl", "task.json", "tokenizer"}
    assert set(paths) == names and all(os.path.exists(p) for p in paths.values())
    leftovers = [f for _, _, files in os.walk(tmp_path) for f in files if f.endswith(".tmp")]
    assert not leftovers and not [d for d in os.listdir(tmp_path) if d.startswith(".")]
    queries, corpus, qrels, run = syn.make_corpus(SMALL)
    assert read_queries(paths["queries.jsonl"]) == queries
    assert read_corpus(paths["corpus.jsonl"]) == corpus
    assert read_qrels(paths["qrels.trec"]) == qrels
    lists = read_run_lists(paths["first_stage.trec"])
    assert {q: [e.docid for e in entries] for q, entries in lists.items()} == run
    data = syn.generate(SMALL)
    held = read_run(paths["first_stage_heldout.trec"])
    assert set(held) == set(syn.split_qids(data, "heldout"))
    ref = syn.reference_ndcg(SMALL, "heldout")
    for name, key in (("first_stage_heldout.trec", "first_stage"), ("teacher_heldout.trec", "teacher")):
        measured = aggregate(evaluate(read_run(paths[name]), qrels, ["ndcg_cut.10"]))["ndcg_cut_10"]
        assert measured == pytest.approx(ref[key])
    sft = json.load(open(paths["sft_train.json"]))
    assert sft == json.loads(json.dumps(syn.sft_records(SMALL, "train")))
    rows = pq.read_table(paths["rl_train.parquet"]).to_pylist()
    assert [r["label"] for r in rows] == [r["label"] for r in syn.rl_records(SMALL, "train")]
    assert rows[0]["prompt"] == syn.rl_records(SMALL, "train")[0]["prompt"]
    report = Report()
    raw = [row for _, row in read_raw_rows(paths["raw/training_data_all.jsonl"], report)]
    assert not report.errors and len(raw) == len(sft)
    texts = RawTexts(os.path.join(tmp_path, "out", "raw"))
    assert texts.query(raw[0]) == queries[raw[0]["qid"]]
    assert [p["text"] for p in texts.passages(raw[0])] == [corpus[d]["text"] for d in raw[0]["initial_list"]]
    meta = json.load(open(paths["task.json"]))
    assert meta["task"]["seed"] == SMALL.seed and meta["reference_ndcg"]["heldout"]["teacher"] == ref["teacher"]
    # rewriting replaces the files in place, the tokenizer directory included
    again = syn.write_files(SMALL, tmp_path / "out")
    assert again == paths and json.load(open(paths["sft_train.json"])) == sft
    assert sorted(os.listdir(tmp_path / "out")) == sorted({n.split("/")[0] for n in names})


def test_records_convert_like_raw_rows(tok, tmp_path):
    """The raw rows written for `data build raw` convert (reasonrank_jax.data.convert) to the same SFT records."""
    from reasonrank_jax.data.convert import raw_to_sft
    from reasonrank_jax.data.records import RawTexts

    paths = syn.write_files(SMALL, tmp_path, tokenizer=False)
    texts = RawTexts(os.path.join(tmp_path, "raw"))
    rows = syn.raw_rows(SMALL, "train")
    records = syn.sft_records(SMALL, "train")
    for row, record in zip(rows[:10], records[:10]):
        converted = raw_to_sft(row, texts, tok)
        assert {k: record[k] for k in converted} == converted
    assert "tokenizer" not in paths


def test_task_validation():
    with pytest.raises(ValueError):
        syn.SyntheticTask(window=30)
    with pytest.raises(ValueError):
        syn.SyntheticTask(step=9)
    with pytest.raises(ValueError):
        syn.SyntheticTask(num_relevant=(10, 12), num_decoys=(5, 10))
    with pytest.raises(ValueError):
        syn.SyntheticTask(teacher_swap_prob=1.5)
    with pytest.raises(ValueError, match="teacher_ties"):
        syn.SyntheticTask(teacher_ties="alphabetical")
    with pytest.raises(ValueError):
        syn.SyntheticTask(think_style="free")
    assert syn.SyntheticTask(query_words=[2, 3]) == syn.SyntheticTask()  # lists (JSON, YAML) become tuples
    small_vocab = syn.SyntheticTask(num_topic_words=6, num_queries=10)
    assert all(set(t.split()) <= set(syn.TOPIC_WORDS[:6]) for t in syn.make_corpus(small_vocab)[0].values())
    assert np.isfinite(syn.reference_ndcg(small_vocab, "heldout")["teacher"])
