"""`reasonrank-jax sweep SWEEP.yaml`: a grid or list of demo settings over seeds, each run in its own directory.

SWEEP.yaml::

    base: ../pipeline.yaml      # a demo config (relative to this file; default: the embedded demo); paths in it
                                # are relative to the current directory, as in any --config
    set: {grpo.set: ["train.steps=10"]}   # overrides of every run (optional)
    runs:                       # named settings (optional; default: one, the base)
      - {name: full}
      - {name: wo_sft, sft.enabled: false}
    grid:                       # crossed with every run (optional)
      grpo.grpo.reward: [multiview, ndcg]
    seeds: [0, 1, 2]
    launch: "reasonrank-jax launch tpu-vm --tpu my-v5p-128 --zone us-east5-a --"   # for --mode commands

A key is a demo config key (``seed``, ``filter.alpha``, ``task.window``, ``sft.enabled``) or, for a training setting,
the stage then the training key: ``grpo.grpo.reward`` adds ``grpo.reward=…`` to ``grpo.set``, ``sft.lora.rank``
adds ``lora.rank=…`` to ``sft.set``.

``--mode local`` (default) runs the pending runs one after another (`reasonrank-jax demo` in a child process, its
log in ``OUT/logs/``); runs that finished are skipped and a killed run resumes where it stopped. ``--mode commands``
writes ``OUT/commands.sh`` (one launch command per pending run) for a pod or a cluster instead. Both end with the
finished runs' ``results.csv``, ``results.md`` and ``plots/`` (curves per run; final metric per setting over
seeds).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time

from reasonrank_jax.config import option
from reasonrank_jax.errors import InputError

TRAINERS = ("sft", "grpo")
_SAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    sweep: str | None = option(positional=True, required=True, metavar="SWEEP.yaml", help="the sweep file")
    out: str | None = option(metavar="DIR", help="sweep directory (default: the file's `out`, else "
                                                 "sweeps/<file name>)")
    mode: str = option("local", choices=("local", "commands"),
                       help="local: run the pending runs here, one after another; commands: write their launch "
                            "commands to OUT/commands.sh")
    max_runs: int | None = option(min=1, help="run at most N pending runs this time (local)")


CONFIG = SweepConfig


@dataclasses.dataclass(frozen=True)
class Run:
    setting: str                   # the setting's name (its overrides), the same for every seed
    seed: int
    overrides: tuple[tuple[str, object], ...]  # (key, value) as written in the sweep, seed excluded

    @property
    def name(self) -> str:
        return f"{self.setting}/seed{self.seed}"


# ---- reading the sweep ----

def _slug(overrides: list[tuple[str, object]]) -> str:
    if not overrides:
        return "base"
    return _SAFE.sub("_", ",".join(f"{k}={_plain(v)}" for k, v in overrides))[:150]


def _plain(value) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value).lower() if isinstance(value, bool) \
        else str(value)


def read_sweep(path: str) -> tuple[dict, list[Run]]:
    """(the sweep mapping, its runs: every setting crossed with the grid, then the seeds)."""
    from reasonrank_jax.config import read_yaml_mapping

    spec = read_yaml_mapping(path)
    known = {"base", "set", "runs", "grid", "seeds", "launch", "out", "metric"}
    for key in spec:
        if key not in known:
            raise InputError(f"unknown key (known: {', '.join(sorted(known))})", path=path, field=key)
    settings = spec.get("runs") or [{}]
    if not isinstance(settings, list) or not all(isinstance(s, dict) for s in settings):
        raise InputError("must be a list of mappings (name: ..., key: value, ...)", path=path, field="runs")
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise InputError("must map keys to non-empty lists of values", path=path, field="grid")
    seeds = spec.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                           for s in seeds):
        raise InputError(f"must be a non-empty list of integers >= 0, got {seeds!r}", path=path, field="seeds")
    if not isinstance(spec.get("set", {}), dict):
        raise InputError("must be a mapping of key: value", path=path, field="set")
    runs, names = [], set()
    for i, setting in enumerate(settings):
        setting = dict(setting)
        label = setting.pop("name", None)
        if "seed" in setting:
            raise InputError("give seeds in `seeds`, not in a run", path=path, field=f"runs[{i}].seed")
        for values in itertools.product(*grid.values()) if grid else [()]:
            overrides = [*setting.items(), *zip(grid, values)]
            grid_part = list(zip(grid, values))
            name = (f"{label}" + (f",{_slug(grid_part)}" if grid_part else "")) if label else _slug(overrides)
            name = _SAFE.sub("_", str(name))
            if name in names:
                raise InputError(f"two runs are both named {name!r}", path=path, field="runs")
            names.add(name)
            runs.extend(Run(name, seed, tuple(overrides)) for seed in seeds)
    return spec, runs


def _set_key(mapping: dict, dotted: str, value, path: str) -> None:
    """Set a demo config key in a nested mapping; stage-prefixed training keys go to that stage's ``set``."""
    from reasonrank_jax.config import Source, Values
    from reasonrank_jax.pipeline.config import DemoConfig

    parts = dotted.split(".")
    if parts[0] in TRAINERS and len(parts) > 2:
        stage = mapping.setdefault(parts[0], {})
        stage["set"] = [*stage.get("set", []), f"{'.'.join(parts[1:])}={_plain(value)}"]
        return
    values = Values(DemoConfig)
    values.lookup(dotted.replace("-", "_"), Source(path, dotted))  # unknown keys are bad input, named
    node = mapping
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    if parts[-1] == "set" and isinstance(node.get("set"), list):
        node["set"] = [*node["set"], *(value if isinstance(value, list) else [value])]
    else:
        node[parts[-1]] = value


def run_mapping(spec: dict, sweep_path: str, run: Run, run_dir: str) -> dict:
    """The demo config (a nested mapping) of one run: base, then `set`, then the run's overrides and seed."""
    import copy

    from reasonrank_jax.config import read_yaml_mapping

    base = spec.get("base")
    mapping = {}
    if base:
        base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(os.path.abspath(sweep_path)), base)
        if not os.path.exists(base_path):
            raise InputError("no such file", path=base_path, field="base")
        mapping = copy.deepcopy(read_yaml_mapping(base_path))
    for key, value in (spec.get("set") or {}).items():
        _set_key(mapping, key, value, sweep_path)
    for key, value in run.overrides:
        _set_key(mapping, key, value, sweep_path)
    mapping["seed"] = run.seed
    mapping["out"] = run_dir
    return mapping


# ---- running ----

class Sweep:
    def __init__(self, config: SweepConfig):
        self.config = config
        self.spec, self.runs = read_sweep(config.sweep)
        stem = os.path.splitext(os.path.basename(config.sweep))[0]
        self.out = config.out or self.spec.get("out") or os.path.join("sweeps", stem)

    def run_dir(self, run: Run) -> str:
        return os.path.join(self.out, "runs", run.setting, f"seed{run.seed}")

    def config_path(self, run: Run) -> str:
        return os.path.join(self.out, "configs", f"{run.setting}.seed{run.seed}.yaml")

    def finished(self, run: Run) -> bool:
        return os.path.exists(os.path.join(self.run_dir(run), "results.json"))

    def run_config_text(self, run: Run) -> str:
        """The run's demo YAML, checked as `demo` checks it (bad settings stop the sweep before anything runs)."""
        import yaml

        from reasonrank_jax.config import Values
        from reasonrank_jax.pipeline.config import DemoConfig

        mapping = run_mapping(self.spec, self.config.sweep, run, self.run_dir(run))
        values = Values(DemoConfig)
        values.set_mapping(mapping, self.config.sweep)
        values.build(self.config.sweep)
        return f"# sweep {self.config.sweep}, run {run.name}\n" + yaml.safe_dump(mapping, sort_keys=False)

    def write_run_config(self, run: Run, text: str) -> None:
        from reasonrank_jax.outputs import atomic_write

        path = self.config_path(run)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                if f.read() == text:
                    return
        atomic_write(path, text)

    def reuse_sft(self, run: Run) -> str | None:
        """Copy the finished data, model and SFT stages of a run that differs from ``run`` only after SFT (in
        ``grpo``: the reward ablation's settings share their SFT model), so that they are not trained again.
        Returns the run copied from, or None. A copy, not a link: every run directory stays whole."""
        import shutil

        from reasonrank_jax.config import to_yaml
        from reasonrank_jax.outputs import atomic_write
        from reasonrank_jax.pipeline.demo import SFT_STAGES

        target = self.run_dir(run)
        if os.path.exists(target):
            return None
        mine = self._demo_config(run)
        if not mine.sft.enabled:
            return None
        for other in self.runs:
            source = self.run_dir(other)
            if other == run or not all(os.path.exists(os.path.join(source, "stages", f"{s}.json"))
                                       for s in SFT_STAGES if s != "tfds" or mine.data.tfds):
                continue
            theirs = self._demo_config(other)
            if dataclasses.replace(theirs, out=mine.out, grpo=mine.grpo) != mine:
                continue
            tmp = f"{target}.copying"
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(os.path.join(tmp, "stages"))
            for part in ("data", "model_init", "sft", os.path.join("export", "sft"), os.path.join("rerank", "sft"),
                         "configs"):
                if os.path.exists(os.path.join(source, part)):
                    shutil.copytree(os.path.join(source, part), os.path.join(tmp, part))
            for stage in SFT_STAGES:
                marker = os.path.join(source, "stages", f"{stage}.json")
                if os.path.exists(marker):
                    with open(marker, encoding="utf-8") as f:
                        text = f.read().replace(json.dumps(source)[1:-1], json.dumps(target)[1:-1])
                    atomic_write(os.path.join(tmp, "stages", f"{stage}.json"), text)
            grpo_yaml = os.path.join(tmp, "configs", "grpo.yaml")
            if os.path.exists(grpo_yaml):
                os.remove(grpo_yaml)
            atomic_write(os.path.join(tmp, "config.yaml"), to_yaml(mine, "demo"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(tmp, target)
            return other.name
        return None

    def _demo_config(self, run: Run):
        from reasonrank_jax.config import Values
        from reasonrank_jax.pipeline.config import DemoConfig

        values = Values(DemoConfig)
        values.set_mapping(run_mapping(self.spec, self.config.sweep, run, self.run_dir(run)), self.config.sweep)
        return values.build(self.config.sweep)

    def demo_command(self, run: Run) -> list[str]:
        return ["reasonrank-jax", "demo", "--config", self.config_path(run), "--out", self.run_dir(run)]

    def run_local(self, pending: list[Run]) -> int:
        logs = os.path.join(self.out, "logs")
        os.makedirs(logs, exist_ok=True)
        started, failed = time.perf_counter(), []
        for index, run in enumerate(pending, start=1):
            elapsed = time.perf_counter() - started
            eta = f", sweep ETA {_fmt(elapsed / (index - 1) * (len(pending) - index + 1))}" if index > 1 else ""
            log_path = os.path.join(logs, f"{run.setting}.seed{run.seed}.log")
            print(f"[sweep {index}/{len(pending)}] {run.name} (log {log_path}; elapsed {_fmt(elapsed)}{eta})",
                  flush=True)
            shared = self.reuse_sft(run)
            if shared:
                print(f"  its data and SFT stages are those of {shared} (the same settings up to GRPO): copied",
                      flush=True)
            argv = [sys.executable, "-m", "reasonrank_jax", *self.demo_command(run)[1:]]
            with open(log_path, "a", encoding="utf-8") as log:
                code = subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT)
            if code != 0:
                print(f"  {run.name}: demo exited with {code}; see {log_path} (rerun the sweep to resume it)")
                failed.append(run)
                if code in (-2, 130):  # interrupted: stop the sweep too
                    break
            else:
                with open(os.path.join(self.run_dir(run), "results.json"), encoding="utf-8") as f:
                    results = json.load(f)
                final = results.get("grpo") or results.get("sft")
                print(f"  {run.name}: nDCG@10 {final['ndcg_cut.10']:.4f} (first stage "
                      f"{results['first_stage']['ndcg_cut.10']:.4f})", flush=True)
        return 1 if failed else 0

    def write_commands(self, pending: list[Run]) -> None:
        from reasonrank_jax.outputs import atomic_write

        prefix = shlex.split(self.spec.get("launch") or "")
        lines = ["#!/bin/sh", f"# {len(pending)} pending runs of {self.config.sweep}; each resumes when rerun",
                 "set -e"]
        lines += [shlex.join(prefix + self.demo_command(run)) for run in pending]
        path = os.path.join(self.out, "commands.sh")
        atomic_write(path, "\n".join(lines) + "\n")
        os.chmod(path, 0o755)
        print("\n".join(lines[3:]))
        print(f"wrote {path}; rerun this sweep when the runs have finished for the table and plots")


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds < 3600 else f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def main(config: SweepConfig) -> int:
    from reasonrank_jax.outputs import OutputDir
    from reasonrank_jax.pipeline.sweep_report import write_sweep_report

    if not os.path.isfile(config.sweep):
        raise InputError("no such file", path=config.sweep, field="SWEEP.yaml")
    sweep = Sweep(config)
    out = OutputDir(sweep.out, "sweep", can_overwrite=False, field="--out")
    texts = {run: sweep.run_config_text(run) for run in sweep.runs}  # every run checked before anything is written
    out.record_config(config)
    for run, text in texts.items():
        sweep.write_run_config(run, text)
    pending = [r for r in sweep.runs if not sweep.finished(r)]
    done = len(sweep.runs) - len(pending)
    print(f"sweep {config.sweep}: {len(sweep.runs)} runs ({len({r.setting for r in sweep.runs})} settings x "
          f"{len({r.seed for r in sweep.runs})} seeds), {done} finished earlier, {len(pending)} to go; in {sweep.out}")
    code = 0
    if pending and config.mode == "commands":
        sweep.write_commands(pending)
    elif pending:
        code = sweep.run_local(pending[:config.max_runs] if config.max_runs else pending)
    write_sweep_report(sweep)
    return code
