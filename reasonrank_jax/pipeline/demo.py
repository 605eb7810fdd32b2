"""`reasonrank-jax demo [--out DIR] [--config FILE.yaml]`: the whole ReasonRank job, end to end, resumable.

Stages (each records ``stages/<name>.json`` when it has finished, so a rerun skips it and a killed demo resumes in
the stage it was in; the training and rerank commands resume themselves):

1. ``data``: the synthetic task's files (queries, corpus, qrels, first stage, teacher windows, tokenizer), or
   nothing for ``data.source=files``;
2. ``filter``: the self-consistency filter over the teacher's windows (`data filter --alpha`), split into SFT and
   RL sets;
3. ``tfds``: the SFT set built as a tokenized TFDS array_record dataset (`data build sft`);
4. ``model``: a tiny Qwen2 from scratch (or ``model.path``);
5. ``sft``, ``export_sft``: `train sft`, then `export`;
6. ``grpo``, ``export_grpo``: `train grpo` from the SFT run, then `export` (``DIR/model``: the final model);
7. ``rerank_sft``, ``rerank_grpo``: sliding-window rerank of the held-out queries (slot scheduler);
8. ``report``: nDCG@10 / Recall@10 of the first stage and each model (results.json), plots, report.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from reasonrank_jax.errors import InputError
from reasonrank_jax.pipeline.config import DemoConfig

CONFIG = DemoConfig
COMMAND = "demo"

# The demo's training configs (what `sft.config` / `grpo.config` replace). Measured on 2 CPU cores: see README.
# max_length 320: the default task's examples are 260-266 tokens, and a 320 bucket makes an SFT step 1.6x faster
# than the 384 one (0.63 s against 0.99 s); the TFDS build drops and counts longer examples, so a task with longer
# passages needs `sft.set: [data.max_length=...]`.
# 40 GRPO steps, not 25: GRPO's margin over the same SFT model grew from 25 to 40 steps (seeds 0 and 2: +0.056 ->
# +0.077, +0.014 -> +0.071); 500 SFT steps instead of 600 to pay for them cost SFT 0.03 (benchmarks/README.md).
DEMO_SFT = {
    "model": {"dtype": "float32", "param_dtype": "float32"},
    "data": {"max_length": 320, "smallest_bucket": 128},
    "train": {"steps": 600, "global_batch": 16, "micro_batch": 16, "save_every": 600, "keep": 1, "eval_every": 200},
    "optim": {"lr": 3.0e-3, "schedule": "cosine", "warmup_ratio": 0.05, "b2": 0.95, "clip_norm": 1.0},
    "mesh": {"data": -1, "fsdp": 1, "tensor": 1},
}
DEMO_GRPO = {
    "model": {"dtype": "float32", "param_dtype": "float32"},
    "train": {"steps": 40, "micro_batch": 16, "save_every": 40, "keep": 1, "eval_every": 0},
    "optim": {"lr": 2.0e-4, "schedule": "constant"},
    "grpo": {"prompts_per_step": 16, "rollouts": 8, "mini_batch": 8, "max_prompt": 1024, "max_response": 64,
             "reward": "multiview"},
    "mesh": {"data": -1, "fsdp": 1, "tensor": 1},
}
# The stages a sweep may share between runs that differ only in GRPO (reasonrank_jax/pipeline/sweep.py).
SFT_STAGES = ("data", "filter", "tfds", "model", "sft", "export_sft", "rerank_sft")
# Rough share of a default demo's time per stage (2 CPU cores), for the overall ETA.
STAGE_WEIGHTS = {"data": 2, "filter": 1, "tfds": 1, "model": 1, "sft": 45, "export_sft": 1, "grpo": 40,
                 "export_grpo": 1, "rerank_sft": 6, "rerank_grpo": 6, "report": 1}


class Pipeline:
    """The stages of one demo run over an output directory (side effects live here)."""

    def __init__(self, config: DemoConfig):
        self.config = config
        self.out = config.out
        self.started = time.perf_counter()
        self.stage_times: dict[str, float] = {}

    # ---- paths ----
    def path(self, *parts: str) -> str:
        return os.path.join(self.out, *parts)

    def marker(self, stage: str) -> str:
        return self.path("stages", f"{stage}.json")

    def done(self, stage: str) -> dict | None:
        try:
            with open(self.marker(stage), encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def stages(self) -> list[str]:
        c = self.config
        names = ["data", "filter"]
        if c.sft.enabled and c.data.tfds:
            names.append("tfds")
        names.append("model")
        if c.sft.enabled:
            names += ["sft", "export_sft"]
        if c.grpo.enabled:
            names += ["grpo", "export_grpo"]
        if c.sft.enabled:
            names.append("rerank_sft")
        if c.grpo.enabled:
            names.append("rerank_grpo")
        return names + ["report"]

    # ---- running ----
    def run(self) -> int:
        names = self.stages()
        total = sum(STAGE_WEIGHTS[n] for n in names)
        finished = ran = 0.0  # stage weights done in all, and done by this process (its pace gives the ETA)
        for index, name in enumerate(names, start=1):
            record = self.done(name)
            if record is not None:
                print(f"[demo {index}/{len(names)}] {name}: done earlier ({record.get('seconds', 0):.0f} s), kept")
                finished += STAGE_WEIGHTS[name]
                continue
            elapsed = time.perf_counter() - self.started
            eta = f", demo ETA {_fmt(elapsed / ran * (total - finished))}" if ran > 0 and elapsed > 1 else ""
            print(f"[demo {index}/{len(names)}] {name} (elapsed {_fmt(elapsed)}{eta})", flush=True)
            mark = time.perf_counter()
            result = getattr(self, f"stage_{name}")()
            seconds = time.perf_counter() - mark
            self.stage_times[name] = seconds
            from reasonrank_jax.outputs import atomic_write

            os.makedirs(self.path("stages"), exist_ok=True)
            atomic_write(self.marker(name), json.dumps({"seconds": round(seconds, 2), **(result or {})}, indent=1))
            finished += STAGE_WEIGHTS[name]
            ran += STAGE_WEIGHTS[name]
        return 0

    def cli(self, argv: list[str]) -> None:
        """Run a reasonrank-jax command in this process; its bad input is ours (exit 2, one line already printed)."""
        from reasonrank_jax.cli import main

        code = main(argv)
        if code != 0:
            raise StageFailed(code, argv)

    # ---- data ----
    def synthetic_task(self):
        from reasonrank_jax.data.synthetic import SyntheticTask

        fields = dataclasses.asdict(self.config.task)
        return SyntheticTask(seed=self.config.seed, **fields)

    def stage_data(self) -> dict:
        if self.config.data.source != "synthetic":
            return {}
        from reasonrank_jax.data.synthetic import write_files

        task = self.synthetic_task()
        paths = write_files(task, self.path("data"))
        with open(paths["task.json"], encoding="utf-8") as f:
            reference = json.load(f)["reference_ndcg"]["heldout"]
        print(f"  synthetic task: {task.num_queries} queries; held-out nDCG@10 first stage "
              f"{reference['first_stage']:.3f}, teacher {reference['teacher']:.3f}")
        return {"reference_ndcg": reference}

    def inputs(self) -> dict[str, str]:
        """The files the stages read: synthetic (under DIR/data) or the user's."""
        d = self.config.data
        if d.source == "synthetic":
            data = self.path("data")
            return {"raw": f"{data}/raw/training_data_all.jsonl", "raw_dir": f"{data}/raw",
                    "tokenizer": f"{data}/tokenizer", "sft_heldout": f"{data}/sft_heldout.json",
                    "run": f"{data}/first_stage_heldout.trec", "corpus": f"{data}/corpus.jsonl",
                    "queries": f"{data}/queries.jsonl", "qrels": f"{data}/qrels.trec"}
        return {"raw": d.raw, "raw_dir": d.raw_dir or os.path.dirname(os.path.abspath(d.raw)),
                "tokenizer": self.config.model.path, "sft_heldout": d.sft_heldout, "run": d.run,
                "corpus": d.corpus, "queries": d.queries, "qrels": d.qrels}

    def stage_filter(self) -> dict:
        f, i = self.config.filter, self.inputs()
        out = self.path("data", "filtered")
        os.makedirs(out, exist_ok=True)
        self.cli(["data", "filter", i["raw"], "--out", f"{out}/kept.jsonl", "--report", f"{out}/report.json",
                  "--alpha", str(f.alpha), "--raw-dir", i["raw_dir"], "--tokenizer", i["tokenizer"],
                  "--sft-out", f"{out}/sft.json", "--rl-out", f"{out}/rl.parquet",
                  "--sft-fraction", str(f.sft_fraction), "--max-passage-length",
                  str(self.config.rerank.max_passage_length), "--overwrite"])
        with open(f"{out}/report.json", encoding="utf-8") as fh:
            report = json.load(fh)
        return {"report": report}

    def stage_tfds(self) -> dict:
        from reasonrank_jax.data.builders import BuildOptions, build

        manual = self.path("data", "filtered")
        max_length = self.training_mapping("sft").get("data", {}).get("max_length", 23552)
        options = BuildOptions(tokenizer_dir=self.inputs()["tokenizer"], max_length=max_length,
                               validation_fraction=0.0, sft_file="sft.json", overwrite=True)
        version_dir, builder = build("sft", manual, self.path("data", "tfds"), options)
        print("  " + builder.report.summary().replace("\n", "\n  "))
        return {"version_dir": version_dir}

    # ---- model ----
    def stage_model(self) -> dict:
        m = self.config.model
        if m.path:
            return {"path": m.path}
        from reasonrank_jax.pipeline.model import build_from_scratch

        summary = build_from_scratch(self.path("model_init"), self.inputs()["tokenizer"], m, self.config.seed)
        print(f"  a Qwen2 from scratch: {summary['params']:,} parameters, d={m.hidden_size}, {m.num_layers} layers")
        return summary

    def start_model(self) -> str:
        return self.config.model.path or self.path("model_init")

    # ---- training ----
    def training_mapping(self, trainer: str) -> dict:
        stage = getattr(self.config, trainer)
        if stage.config:
            from reasonrank_jax.config import read_yaml_mapping

            return read_yaml_mapping(stage.config)
        return DEMO_SFT if trainer == "sft" else DEMO_GRPO

    def training_yaml(self, trainer: str) -> str:
        """The training YAML the stage runs with (the user's, or the embedded one written into DIR/configs)."""
        stage = getattr(self.config, trainer)
        if stage.config:
            return stage.config
        import yaml

        from reasonrank_jax.outputs import atomic_write

        path = self.path("configs", f"{trainer}.yaml")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, f"# the demo's {trainer} settings (reasonrank_jax/pipeline/demo.py)\n"
                           + yaml.safe_dump(self.training_mapping(trainer), sort_keys=False))
        return path

    def stage_sft(self) -> dict:
        i = self.inputs()
        data = self.done("tfds")["version_dir"] if self.config.data.tfds else self.path("data", "filtered",
                                                                                         "sft.json")
        argv = ["train", "sft", "--config", self.training_yaml("sft"), f"model.path={self.start_model()}",
                f"data.path={data}", f"train.out={self.path('sft')}", f"train.seed={self.config.seed}"]
        if i["sft_heldout"]:
            argv.append(f"data.heldout={i['sft_heldout']}")
        self.cli(argv + list(self.config.sft.set))
        return {}

    def stage_grpo(self) -> dict:
        start = self.path("sft") if self.config.sft.enabled else self.start_model()
        heldout = self.grpo_heldout()
        argv = ["train", "grpo", "--config", self.training_yaml("grpo"), f"model.path={start}",
                f"data.path={self.path('data', 'filtered', 'rl.parquet')}", f"train.out={self.path('grpo')}",
                f"train.seed={self.config.seed}"]
        if heldout:
            argv.append(f"data.heldout={heldout}")
        self.cli(argv + list(self.config.grpo.set))
        return {}

    def grpo_heldout(self) -> str | None:
        """Held-out RL rows (synthetic: the held-out queries' windows) for GRPO's held-out rewards."""
        if self.config.data.source != "synthetic":
            return None
        from reasonrank_jax.data.synthetic import rl_records
        from reasonrank_jax.outputs import atomic_write

        path = self.path("data", "rl_heldout.jsonl")
        rows = rl_records(self.synthetic_task(), "heldout")[:32]
        atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))
        return path

    def export(self, run: str, out: str) -> dict:
        self.cli(["export", self.path(run), "--out", out, "--overwrite"])
        return {"path": out}

    def stage_export_sft(self) -> dict:
        return self.export("sft", self.path("export", "sft"))

    def stage_export_grpo(self) -> dict:
        return self.export("grpo", self.path("model"))

    # ---- rerank and report ----
    def rerank_settings(self) -> dict:
        r, t = self.config.rerank, self.config.task
        synthetic = self.config.data.source == "synthetic"
        return {"top": r.top or (t.passages_per_query if synthetic else 100),
                "window": r.window or (t.window if synthetic else 20),
                "step": r.step or (t.step if synthetic else 10)}

    def rerank(self, model: str, out: str) -> dict:
        i, r, s = self.inputs(), self.config.rerank, self.rerank_settings()
        self.cli(["rerank", "--model", model, "--run", i["run"], "--corpus", i["corpus"], "--queries", i["queries"],
                  "--out", out, "--window", str(s["window"]), "--step", str(s["step"]), "--top", str(s["top"]),
                  "--mode", "rank_GPT_reasoning", "--max-passage-length", str(r.max_passage_length),
                  "--max-new-tokens", str(r.max_new_tokens), "--slots", str(r.slots), "--dtype", r.dtype])
        return {"run": os.path.join(out, "run.trec")}

    def stage_rerank_sft(self) -> dict:
        return self.rerank(self.path("export", "sft"), self.path("rerank", "sft"))

    def stage_rerank_grpo(self) -> dict:
        return self.rerank(self.path("model"), self.path("rerank", "grpo"))

    def stage_report(self) -> dict:
        from reasonrank_jax.pipeline.report import write_report

        runs = {"first_stage": self.inputs()["run"]}
        for stage in ("sft", "grpo"):
            record = self.done(f"rerank_{stage}")
            if record:
                runs[stage] = record["run"]
        return write_report(self, runs)


class StageFailed(Exception):
    def __init__(self, code: int, argv: list[str]):
        super().__init__(f"`reasonrank-jax {' '.join(argv[:2])}` exited with {code}")
        self.code = code


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds < 3600 else f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def check_same_demo(out: str, config: DemoConfig) -> None:
    """An output directory resumes only the demo it holds: the same resolved config (its path aside)."""
    from reasonrank_jax.config import Values, read_yaml_mapping

    path = os.path.join(out, "config.yaml")
    if not os.path.exists(path):
        return
    values = Values(DemoConfig)
    values.set_mapping(read_yaml_mapping(path), path)
    previous = dataclasses.asdict(values.build(path))
    current = dataclasses.asdict(config)
    for key in ("out",):
        previous.pop(key), current.pop(key)
    for section, fields in current.items():
        if not isinstance(fields, dict):
            if previous[section] != fields:
                raise InputError(f"holds a demo with {section}={previous[section]!r}, not {fields!r}; use another "
                                 "--out", path=path, field=section)
            continue
        for key, value in fields.items():
            if previous[section].get(key) != value:
                raise InputError(f"holds a demo with {section}.{key}={previous[section].get(key)!r}, not {value!r}; "
                                 "use another --out", path=path, field=f"{section}.{key}")


def _check_inputs(config: DemoConfig) -> None:
    """Every input the config names exists (before anything is written)."""
    named = {"model.path": config.model.path, "sft.config": config.sft.config, "grpo.config": config.grpo.config}
    if config.data.source == "files":
        named.update({f"data.{k}": getattr(config.data, k)
                      for k in ("raw", "raw_dir", "sft_heldout", "run", "corpus", "queries", "qrels")})
    for field, path in named.items():
        if path and not os.path.exists(path):
            raise InputError("no such file or directory", path=path, field=field)
    for field in ("sft.config", "grpo.config"):
        path = named[field]
        if path:
            from reasonrank_jax.training.sections import load_training_config

            load_training_config(path, ("model.path=x", "data.path=x", "train.out=x"), field.split(".")[0],
                                 field=field)


def main(config: DemoConfig) -> int:
    from reasonrank_jax.outputs import OutputDir

    out = OutputDir(config.out, COMMAND, can_overwrite=False)
    check_same_demo(config.out, config)
    _check_inputs(config)
    if not os.path.exists(out.file("config.yaml")):  # a rerun of the same demo keeps its record
        out.record_config(config)
    pipeline = Pipeline(config)
    try:
        pipeline.run()
    except StageFailed as err:
        print(f"demo: stopped: {err}; fix it and rerun the same command to resume (finished stages are kept)")
        return err.code
    return 0
