"""The bad-input suite: every command, on the command line and in its --config form, against broken inputs.

Each case asserts exit code 2, exactly one line on stderr naming what is wrong (file, line or key), no traceback,
and that every file that existed before the command is byte-for-byte unchanged. Foreign files are planted at
output paths. To cover a new command, add rows to CASES: ``argv`` is formatted with the paths of the ``world``
fixture (``{run}``, ``{foreign_file}``, ...); ``expect`` are substrings the error line must contain.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from pathlib import Path
from typing import NamedTuple

import pytest

from _data_helpers import make_raw_rows, write_raw_dir
from reasonrank_jax.cli import main


class Case(NamedTuple):
    id: str
    argv: tuple[str, ...]
    expect: tuple[str, ...]
    config_form: bool = True  # also run with the options moved into a YAML file


RERANK = ("rerank", "--model", "{model}", "--run", "{run}", "--corpus", "{corpus}", "--queries", "{queries}",
          "--max-new-tokens", "4", "--slots", "2", "--dtype", "float32")
SFT = ("train", "sft", "model.path={model}", "train.out={new_out}", "train.steps=1", "train.global_batch=8",
       "train.micro_batch=8")
GRPO = ("train", "grpo", "model.path={model}", "train.out={new_out}", "train.steps=1", "train.micro_batch=8",
        "grpo.prompts_per_step=2", "grpo.rollouts=4", "grpo.mini_batch=2")
SYNTH = ("data", "synth", "--endpoint", "http://127.0.0.1:9/v1", "--model", "teacher", "--tokenizer", "{tokenizer}")
SYNTH_RUN = SYNTH + ("--run", "{run}", "--corpus", "{corpus}", "--queries", "{queries}", "--dataset", "toy")


def swap(argv: tuple[str, ...], option: str, value: str | None) -> tuple[str, ...]:
    """``argv`` with ``option``'s value replaced (None: the option removed)."""
    i = argv.index(option)
    return argv[:i] + ((option, value) if value is not None else ()) + argv[i + 2:]


CASES = [
    # eval
    Case("eval-truncated-gz-run", ("eval", "{truncated_gz}", "--qrels", "{qrels}"), ("{truncated_gz}",)),
    Case("eval-non-utf8-qrels", ("eval", "{run}", "--qrels", "{non_utf8}"), ("{non_utf8}",)),
    Case("eval-empty-run", ("eval", "{empty}", "--qrels", "{qrels}"), ("{empty}",)),
    Case("eval-missing-run", ("eval", "{missing}", "--qrels", "{qrels}"), ("{missing}",)),
    Case("eval-unknown-metric", ("eval", "{run}", "--qrels", "{qrels}", "--metrics", "ndcg@10", "mapp"),
         ("metrics", "mapp")),
    Case("eval-both-judgements", ("eval", "{run}", "--qrels", "{qrels}", "--bright-examples", "{qrels}"),
         ("only one of",)),
    Case("eval-no-judgements", ("eval", "{run}"), ("give one of", "qrels")),
    Case("eval-per-query-not-bool", ("eval", "{run}", "--qrels", "{qrels}", "per_query=maybe"),
         ("per_query=maybe", "true or false"), config_form=False),
    # model-info
    Case("model-info-hidden-abc", ("model-info", "{bad_config_model}"), ("config.json", "hidden_size")),
    Case("model-info-layers-negative", ("model-info", "{negative_layers_model}"),
         ("config.json", "num_hidden_layers")),
    Case("model-info-missing-dir", ("model-info", "{missing}"), ("{missing}",)),
    # smoke
    Case("smoke-hidden-7", ("smoke", "--hidden", "7"), ("hidden", "16")),
    Case("smoke-hidden-0", ("smoke", "--hidden", "0"), ("hidden",)),
    Case("smoke-layers-float", ("smoke", "layers=1.5"), ("layers=1.5", "integer"), config_form=False),
    Case("smoke-model-type", ("smoke", "--model-type", "gpt2"), ("model_type", "gpt2")),
    Case("smoke-out-foreign-checkpoint", ("smoke", "--out", "{foreign_dir}"), ("{foreign_dir}", "--overwrite")),
    Case("smoke-out-is-a-file", ("smoke", "--out", "{foreign_file}"), ("{foreign_file}", "not a directory")),
    # rerank
    Case("rerank-model-typo", swap(RERANK, "--model", "{missing}") + ("--out", "{new_out}"), ("{missing}",)),
    Case("rerank-truncated-gz-corpus", swap(RERANK, "--corpus", "{truncated_gz}") + ("--out", "{new_out}"),
         ("{truncated_gz}",)),
    Case("rerank-non-utf8-queries", swap(RERANK, "--queries", "{non_utf8}") + ("--out", "{new_out}"),
         ("{non_utf8}",)),
    Case("rerank-empty-run", swap(RERANK, "--run", "{empty}") + ("--out", "{new_out}"),
         ("{empty}", "no queries")),
    Case("rerank-step-over-window", RERANK + ("--out", "{new_out}", "--window", "5", "--step", "6"),
         ("step", "window")),
    Case("rerank-dtype-float16", RERANK + ("--out", "{new_out}", "--dtype", "float16"), ("dtype", "float16")),
    Case("rerank-scheduler-fifo", RERANK + ("--out", "{new_out}", "--scheduler", "fifo"), ("scheduler", "fifo")),
    Case("rerank-no-corpus", swap(RERANK, "--corpus", None) + ("--out", "{new_out}"), ("missing required", "corpus")),
    Case("rerank-both-query-sources", RERANK + ("--out", "{new_out}", "--bright-examples", "{queries}"),
         ("only one of",)),
    Case("rerank-out-foreign-dir", RERANK + ("--out", "{foreign_dir}"), ("{foreign_dir}", "--overwrite")),
    Case("rerank-out-is-a-file", RERANK + ("--out", "{foreign_file}"), ("{foreign_file}", "not a directory")),
    Case("rerank-out-under-a-file", RERANK + ("--out", "{foreign_file}/sub"), ("{foreign_file}/sub",)),
    # data filter
    Case("filter-truncated-gz", ("data", "filter", "{truncated_gz}", "--out", "{new_file}"), ("{truncated_gz}",)),
    Case("filter-non-utf8", ("data", "filter", "{non_utf8}", "--out", "{new_file}"), ("{non_utf8}",)),
    Case("filter-out-foreign-file", ("data", "filter", "{raw}", "--out", "{foreign_file}"),
         ("{foreign_file}", "--overwrite")),
    Case("filter-out-is-the-input", ("data", "filter", "{raw}", "--out", "{raw}"), ("{raw}", "input")),
    Case("filter-report-is-a-dir", ("data", "filter", "{raw}", "--out", "{new_file}", "--report", "{foreign_dir}"),
         ("{foreign_dir}", "directory")),
    Case("filter-alpha-range", ("data", "filter", "{raw}", "--out", "{new_file}", "--alpha", "2"), ("alpha",)),
    Case("filter-stage-needs-tokenizer", ("data", "filter", "{raw}", "--out", "{new_file}", "--sft-out", "{new_out}"),
         ("raw-dir",)),
    # data stats
    Case("stats-truncated-gz", ("data", "stats", "{truncated_gz}"), ("{truncated_gz}",)),
    Case("stats-non-utf8", ("data", "stats", "{non_utf8}"), ("{non_utf8}",)),
    Case("stats-alpha", ("data", "stats", "{raw}", "--alpha", "-1"), ("alpha",)),
    # data build
    Case("build-empty-manual-dir", ("data", "build", "sft", "--manual-dir", "{empty_dir}", "--data-dir", "{new_out}"),
         ("{empty_dir}",)),
    Case("build-truncated-raw", ("data", "build", "raw", "--manual-dir", "{truncated_raw_dir}", "--data-dir",
                                 "{new_out}"), ("{truncated_raw_dir}",)),
    Case("build-unknown-kind", ("data", "build", "bogus", "--manual-dir", "{raw_dir}", "--data-dir", "{new_out}"),
         ("kind", "bogus")),
    Case("build-validation-fraction", ("data", "build", "raw", "--manual-dir", "{raw_dir}", "--data-dir",
                                       "{new_out}", "--validation-fraction", "2"), ("validation_fraction",)),
    # data synth
    Case("synth-out-foreign-file", SYNTH + ("--raw", "{raw}", "--raw-dir", "{raw_dir}", "--out", "{foreign_file}"),
         ("{foreign_file}",)),
    Case("synth-top-k-0", SYNTH_RUN + ("--out", "{new_file}", "--top-k", "0"), ("top_k",)),
    Case("synth-concurrency-0", SYNTH_RUN + ("--out", "{new_file}", "--concurrency", "0"), ("concurrency",)),
    Case("synth-raw-needs-raw-dir", SYNTH + ("--raw", "{raw}", "--out", "{new_file}"), ("raw-dir",)),
    Case("synth-raw-and-run", SYNTH_RUN + ("--raw", "{raw}", "--raw-dir", "{raw_dir}", "--out", "{new_file}"),
         ("only one of",)),
    Case("synth-non-utf8-queries", swap(SYNTH_RUN, "--queries", "{non_utf8}") + ("--out", "{new_file}"),
         ("{non_utf8}",)),
    Case("synth-truncated-gz-corpus", swap(SYNTH_RUN, "--corpus", "{truncated_gz}") + ("--out", "{new_file}"),
         ("{truncated_gz}",)),
    Case("synth-out-is-the-run", SYNTH_RUN + ("--out", "{run}"), ("{run}", "input")),
    # train sft
    Case("sft-no-model", ("train", "sft", "data.path={sft_file}", "train.out={new_out}", "train.steps=1"),
         ("model.path",)),
    Case("sft-missing-data", SFT + ("data.path={missing}",), ("{missing}",)),
    Case("sft-truncated-gz-data", SFT + ("data.path={truncated_gz}",), ("{truncated_gz}",)),
    Case("sft-malformed-record", SFT + ("data.path={bad_alpaca}",), ("{bad_alpaca}", "output")),
    Case("sft-row-does-not-fit", SFT + ("data.path={sft_file}", "data.max_length=8", "data.overflow=error"),
         ("{sft_file}", "data.max_length")),
    Case("sft-schedule", SFT + ("data.path={sft_file}", "optim.schedule=linear"), ("optim.schedule", "linear")),
    Case("sft-steps-and-epochs", SFT + ("data.path={sft_file}", "train.epochs=2"), ("only one of",)),
    Case("sft-micro-batch", SFT + ("data.path={sft_file}", "train.micro_batch=3"), ("train.micro_batch",)),
    Case("sft-lr-type", SFT + ("data.path={sft_file}", "optim.lr=fast"), ("optim.lr", "number")),
    Case("sft-out-foreign-dir", SFT[:4] + ("data.path={sft_file}", "train.out={foreign_dir}", "train.steps=1"),
         ("{foreign_dir}", "another directory")),
    Case("sft-unknown-section", SFT + ("data.path={sft_file}", "trainer.steps=3"), ("trainer",)),
    # train grpo
    Case("grpo-no-model", ("train", "grpo", "data.path={rl_file}", "train.out={new_out}", "train.steps=1"),
         ("missing required", "model.path")),
    Case("grpo-missing-data", GRPO + ("data.path={missing}",), ("{missing}",)),
    Case("grpo-row-without-label", GRPO + ("data.path={bad_rl}",), ("{bad_rl}:2", "label")),
    Case("grpo-prompt-not-messages", GRPO + ("data.path={bad_rl_prompt}",), ("{bad_rl_prompt}", "prompt")),
    Case("grpo-heldout-missing", GRPO + ("data.path={rl_file}", "data.heldout={missing}"), ("{missing}",)),
    Case("grpo-mini-batch", GRPO + ("data.path={rl_file}", "grpo.mini_batch=3"), ("grpo.mini_batch",)),
    Case("grpo-micro-batch", GRPO + ("data.path={rl_file}", "train.micro_batch=3"), ("train.micro_batch",)),
    Case("grpo-reward", GRPO + ("data.path={rl_file}", "grpo.reward=mrr"), ("grpo.reward", "mrr")),
    Case("grpo-temperature", GRPO + ("data.path={rl_file}", "grpo.temperature=0"), ("grpo.temperature",)),
    Case("grpo-too-few-prompts", GRPO + ("data.path={rl_file}", "grpo.prompts_per_step=64", "grpo.mini_batch=8"),
         ("{rl_file}", "grpo.prompts_per_step")),
    Case("grpo-every-prompt-too-long", GRPO + ("data.path={rl_file}", "grpo.max_prompt=4"),
         ("{rl_file}", "no usable prompts")),
    Case("grpo-out-foreign-dir", GRPO[:3] + ("data.path={rl_file}", "train.out={foreign_dir}", "train.steps=1"),
         ("{foreign_dir}", "another directory")),
    # export
    Case("export-not-a-run", ("export", "{foreign_dir}", "--out", "{new_out}"), ("{foreign_dir}", "config.yaml")),
    Case("export-no-out", ("export", "{foreign_dir}"), ("missing required", "out")),
    Case("export-dtype", ("export", "{foreign_dir}", "--out", "{new_out}", "--dtype", "float16"), ("dtype",)),
    # plan and launch: --config is the training YAML, so there is no config form of these rows
    Case("plan-no-training-config", ("plan", "--topology", "v5p-8"), ("--config", "training config"), False),
    Case("plan-unknown-slice", ("plan", "--config", "{qrels}", "--topology", "v9-8"), ("--topology", "v9-8"), False),
    Case("plan-odd-slice", ("plan", "--config", "{qrels}", "--topology", "v5p-12"), ("--topology", "v5p-12"),
         False),
    Case("plan-no-topology", ("plan", "--config", "{qrels}"), ("missing required", "--topology"), False),
    Case("plan-config-not-a-mapping", ("plan", "--config", "{qrels}", "--topology", "v5p-8"), ("{qrels}",), False),
    Case("plan-bad-phase", ("plan", "--config", "{qrels}", "--topology", "v5p-8", "--phase", "decode"),
         ("--phase",), False),
    Case("launch-local-nothing-to-run", ("launch", "local", "-n", "2"), ("nothing to run",), False),
    Case("launch-local-zero-processes", ("launch", "local", "-n", "0", "--", "eval"), ("num-processes",), False),
    Case("launch-local-both", ("launch", "local", "--config", "{qrels}", "--", "eval"), ("either",), False),
    Case("launch-local-bad-training-config", ("launch", "local", "--config", "{qrels}"), ("{qrels}",), False),
    # demo and sweep
    Case("demo-out-foreign-dir", ("demo", "--out", "{foreign_dir}"), ("{foreign_dir}", "another directory")),
    Case("demo-missing-model", ("demo", "--out", "{new_out}", "model.path={missing}"), ("{missing}", "model.path"),
         False),
    Case("demo-step-over-window", ("demo", "--out", "{new_out}", "task.step=9"), ("task.step",), False),
    Case("demo-unknown-key", ("demo", "--out", "{new_out}", "trask.window=4"), ("trask",), False),
    Case("demo-bad-teacher-ties", ("demo", "--out", "{new_out}", "task.teacher_ties=alphabetical"),
         ("task.teacher_ties",), False),
    Case("demo-files-without-run", ("demo", "--out", "{new_out}", "data.source=files", "model.path={model}",
                                    "data.raw={raw}"), ("data.run",), False),
    Case("demo-sft-config-not-training", ("demo", "--out", "{new_out}", "sft.config={sft_file}"),
         ("{sft_file}",), False),
    Case("demo-nothing-to-train", ("demo", "--out", "{new_out}", "sft.enabled=false", "grpo.enabled=false"),
         ("sft.enabled",), False),
    Case("sweep-missing-file", ("sweep", "{missing}", "--out", "{new_out}"), ("{missing}",)),
    Case("sweep-unknown-demo-key", ("sweep", "{sweep_bad_key}", "--out", "{new_out}"),
         ("{sweep_bad_key}", "task.windw")),
    Case("sweep-bad-seeds", ("sweep", "{sweep_bad_seeds}", "--out", "{new_out}"), ("{sweep_bad_seeds}", "seeds")),
    Case("sweep-bad-value", ("sweep", "{sweep_bad_value}", "--out", "{new_out}"), ("{sweep_bad_value}", "task.step")),
    Case("sweep-not-a-mapping", ("sweep", "{qrels}", "--out", "{new_out}"), ("{qrels}",)),
    Case("sweep-out-foreign-dir", ("sweep", "{sweep_ok}", "--out", "{foreign_dir}"), ("{foreign_dir}", "another")),
    Case("launch-tpu-vm-unknown-slice", ("launch", "tpu-vm", "--config", "{qrels}", "--tpu", "v9-8", "--zone", "z",
                                         "--project", "p", "--name", "n", "--dry-run"), ("v9-8",), False),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_reranker, qwen2_tokenizer_dir):
    """Good and broken inputs, and foreign files planted where outputs go."""
    root = tmp_path_factory.mktemp("bad_input")
    paths = {"model": str(tiny_reranker / "model"), "run": str(tiny_reranker / "run.trec"),
             "corpus": str(tiny_reranker / "corpus.jsonl"), "queries": str(tiny_reranker / "queries.jsonl"),
             "qrels": str(tiny_reranker / "qrels.txt"), "tokenizer": str(qwen2_tokenizer_dir)}
    raw_dir = write_raw_dir(str(root / "raw"), make_raw_rows(12), bad_lines=False)
    paths.update(raw_dir=raw_dir, raw=os.path.join(raw_dir, "training_data_all.jsonl"))
    truncated_raw_dir = shutil.copytree(raw_dir, root / "truncated_raw")
    rows = gzip.compress((truncated_raw_dir / "training_data_all.jsonl").read_bytes())
    (truncated_raw_dir / "training_data_all.jsonl").write_bytes(rows[: len(rows) // 2])
    paths["truncated_raw_dir"] = str(truncated_raw_dir)

    payload = gzip.compress(Path(paths["corpus"]).read_bytes())
    (root / "truncated.jsonl.gz").write_bytes(payload[: len(payload) // 2])
    (root / "non_utf8.jsonl").write_bytes(b'{"id": "q0", "query": "caf\xe9"}\n')
    (root / "empty.trec").write_text("")
    (root / "sweep_bad_key.yaml").write_text("grid:\n  task.windw: [4, 8]\n")
    (root / "sweep_bad_seeds.yaml").write_text("seeds: [-1]\n")
    (root / "sweep_ok.yaml").write_text("seeds: [0]\n")
    (root / "sweep_bad_value.yaml").write_text("grid:\n  task.step: [2, 99]\n")
    (root / "empty_dir").mkdir()
    (root / "foreign_run.trec").write_text("".join(f"q{i // 100} Q0 d{i} {i % 100 + 1} {1000 - i} bm25\n"
                                                   for i in range(300)))
    foreign = root / "foreign_checkpoint"
    foreign.mkdir()
    (foreign / "model.safetensors").write_bytes(b"weights of someone else")
    (foreign / "tokenizer.json").write_text("{}")
    for name, bad in (("bad_config_model", {"hidden_size": "abc"}), ("negative_layers_model",
                                                                      {"num_hidden_layers": -1})):
        shutil.copytree(paths["model"], root / name)
        config = json.loads((root / name / "config.json").read_text())
        (root / name / "config.json").write_text(json.dumps({**config, **bad}))
    (root / "sft.json").write_text(json.dumps([{"system": "s", "instruction": f"rank {i}", "output": "[1] > [2]"}
                                               for i in range(8)]))
    (root / "bad_alpaca.json").write_text(json.dumps([{"system": "s", "instruction": "rank"}]))
    paths.update(sft_file=str(root / "sft.json"), bad_alpaca=str(root / "bad_alpaca.json"))
    rl_rows = [{"prompt": [{"role": "user", "content": f"rank {i}: [1] a [2] b"}], "label": "[2] > [1]",
                "initial_list": ["d1", "d2"], "relevant_docids": ["d2"]} for i in range(8)]
    (root / "rl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rl_rows))
    (root / "bad_rl.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if i != 1 or k != "label"})
                                               + "\n" for i, r in enumerate(rl_rows)))
    (root / "bad_rl_prompt.jsonl").write_text(json.dumps({**rl_rows[0], "prompt": 42}) + "\n")
    paths.update(rl_file=str(root / "rl.jsonl"), bad_rl=str(root / "bad_rl.jsonl"),
                 bad_rl_prompt=str(root / "bad_rl_prompt.jsonl"))
    paths.update(truncated_gz=str(root / "truncated.jsonl.gz"), non_utf8=str(root / "non_utf8.jsonl"),
                 empty=str(root / "empty.trec"), empty_dir=str(root / "empty_dir"),
                 sweep_bad_key=str(root / "sweep_bad_key.yaml"), sweep_bad_seeds=str(root / "sweep_bad_seeds.yaml"),
                 sweep_bad_value=str(root / "sweep_bad_value.yaml"), sweep_ok=str(root / "sweep_ok.yaml"),
                 foreign_file=str(root / "foreign_run.trec"), foreign_dir=str(foreign),
                 bad_config_model=str(root / "bad_config_model"),
                 negative_layers_model=str(root / "negative_layers_model"),
                 missing=str(root / "does_not_exist"))
    return root, paths


def _snapshot(*roots) -> dict[str, bytes]:
    files = {}
    for root in roots:
        for path in Path(root).rglob("*"):
            if path.is_file():
                files[str(path)] = path.read_bytes()
    return files


def _to_config_form(argv: list[str], tmp_path: Path) -> list[str]:
    """`cmd [sub] --opt value --flag POS` -> `cmd [sub] --config f.yaml POS`: the same settings from YAML."""
    import yaml

    command = argv[:2] if argv[0] in ("data", "train") else argv[:1]
    settings, positionals, i = {}, [], len(command)
    while i < len(argv):
        arg = argv[i]
        if re.match(r"^[a-z_]+\.[a-z_]+=", arg):  # section.key=value -> a nested mapping
            key, value = arg.split("=", 1)
            section, name = key.split(".")
            settings.setdefault(section, {})[name] = yaml.safe_load(value)
        elif arg.startswith("--"):
            values = []
            while i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                values.append(argv[i + 1])
                i += 1
            settings[arg[2:]] = True if not values else values[0] if len(values) == 1 else values
        else:
            positionals.append(arg)
        i += 1
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(settings))
    return command + ["--config", str(path)] + positionals


@pytest.mark.parametrize("form", ["options", "config"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_destroys_nothing(case, form, world, tmp_path, capsys):
    if form == "config" and not case.config_form:
        pytest.skip("a KEY=VALUE case")
    root, paths = world
    paths = {**paths, "new_out": str(tmp_path / "out"), "new_file": str(tmp_path / "out.jsonl")}
    argv = [arg.format(**paths) for arg in case.argv]
    if form == "config":
        argv = _to_config_form(argv, tmp_path)
    before = _snapshot(root, os.path.dirname(paths["model"]))
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for expected in case.expect:  # an option is --max-len or max_len by form: compare with '_' as '-'
        assert expected.format(**paths).replace("_", "-") in err.replace("_", "-"), err
    assert _snapshot(root, os.path.dirname(paths["model"])) == before
    assert not os.path.exists(os.path.join(paths["new_out"], "config.yaml"))  # nothing recorded: never started
