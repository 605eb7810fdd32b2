"""The side-effect edge of training: run directory, metrics (metrics.jsonl, TensorBoard, tqdm), checkpoints,
preemption and resume. The steps themselves are pure (`training.sft.train_step`).

Run directory (`train.out`): `config.yaml` (the resolved config), `metrics.jsonl` (one line per optimizer step s,
s = 1 after the first update), `checkpoints/<step>/`, `tensorboard/`. Rerunning the same command resumes from the
latest complete checkpoint: the data order is a pure function of (seed, epoch, step), so the resumed run sees the
batches the interrupted one would have, and its metrics lines and final parameters are bitwise those of an
uninterrupted run. SIGTERM (preemption) saves a checkpoint after the step in flight and exits with code 143.
"""

from __future__ import annotations

import json
import os
import time

from reasonrank_jax.errors import InputError
from reasonrank_jax.outputs import atomic_write

# Peak dense bf16 FLOP/s per device, for MFU; devices not listed (CPUs) report no MFU.
PEAK_FLOPS = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
              "TPU v6 lite": 918e12, "TPU v6e": 918e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12,
              "NVIDIA A100": 312e12}
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, as if the signal had ended the process


def peak_flops(device) -> float | None:
    kind = getattr(device, "device_kind", "")
    for prefix, flops in PEAK_FLOPS.items():
        if kind.startswith(prefix):
            return flops
    return None


def compiled_flops(compiled) -> float | None:
    """FLOPs of one call of a compiled program, from XLA's cost analysis (None where unavailable)."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


class MetricsLog:
    """metrics.jsonl (appended, flushed per line) and TensorBoard scalars. On resume, lines of steps after the
    restored checkpoint are dropped (they are recomputed, identically). `name` and `tensorboard=False` give other
    per-step logs of a run (e.g. GRPO's eval.jsonl)."""

    def __init__(self, run_dir: str, resume_step: int, name: str = "metrics.jsonl", tensorboard: bool = True):
        from reasonrank_jax.distributed import is_primary

        self.path = os.path.join(run_dir, name)
        self.file = self.writer = None
        if not is_primary():  # one log per run: process 0 writes it
            return
        self._keep_until(resume_step)
        self.file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(os.path.join(run_dir, "tensorboard"))

    def _keep_until(self, step: int) -> None:
        if not os.path.exists(self.path):
            return
        kept = []
        with open(self.path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.endswith("\n"):
                    break  # torn by a kill
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    raise InputError("not a metrics line; is this train.out another run's?", path=self.path,
                                     line=number) from None
                if record.get("step", 0) <= step:
                    kept.append(line)
        atomic_write(self.path, "".join(kept))

    def write(self, record: dict) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for key, value in record.items() if self.writer else ():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"train/{key}", value, record["step"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.writer:
            self.writer.close()


# Settings a resumed run may change: where and how it runs, not what it trains (a checkpoint restores onto any mesh).
RESUMABLE_WITH_CHANGES = {"mesh": None, "train": {"micro_batch", "keep", "save_every", "eval_every", "logits_chunk"},
                          "model": {"remat"}}


def check_same_run(run_dir: str, config, command: str) -> None:
    """A run directory resumes only the run it holds: the same resolved config, except RESUMABLE_WITH_CHANGES."""
    import dataclasses

    from reasonrank_jax.config import Values, read_yaml_mapping, written_by

    path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        if written_by(f.read(4096)) != command:
            raise InputError(f"was not written by 'reasonrank-jax {command}'; use another train.out", path=path)
    values = Values(type(config))
    values.set_mapping(read_yaml_mapping(path), path)
    previous = dataclasses.asdict(values.build(path))
    for section, fields in dataclasses.asdict(config).items():
        free = RESUMABLE_WITH_CHANGES.get(section, set())
        if free is None or not isinstance(fields, dict):
            continue
        for key, value in fields.items():
            if key not in free and previous[section].get(key) != value:
                raise InputError(f"holds a {command} run with {section}.{key}={previous[section].get(key)!r}, not "
                                 f"{value!r}; use another train.out", path=path, field=f"{section}.{key}")


def open_run(config, command: str):
    """(run directory, resolved config text, mesh) of a training command, checked before anything is written: the
    directory holds no other run, the mesh fits the devices, the micro-batch splits over its data axes. Joins the
    multi-host runtime first when started as one of several processes (reasonrank_jax/distributed.py); every
    process checks, and none goes on before all have (so no check sees another process's first writes)."""
    from reasonrank_jax import distributed
    from reasonrank_jax.config import to_yaml
    from reasonrank_jax.outputs import OutputDir
    from reasonrank_jax.sharding import make_mesh

    distributed.initialize()
    train = config.train
    run = OutputDir(train.out, command, field="train.out", can_overwrite=False)
    config_text = to_yaml(config, command)
    check_same_run(train.out, config, command)
    try:
        mesh = make_mesh(config.mesh.shape)
    except ValueError as err:
        raise InputError(str(err), field="mesh") from None
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    if train.micro_batch % data_parallel:
        raise InputError(f"must be a multiple of the data-parallel devices (mesh.data x mesh.fsdp = "
                         f"{data_parallel}), got {train.micro_batch}", field="train.micro_batch")
    distributed.barrier("open_run checked")
    return run, config_text, mesh


def start_run(run, run_dir: str, config_text: str) -> None:
    """The run has really started: process 0 records it (config.yaml); the others wait for that."""
    from reasonrank_jax import distributed

    if distributed.is_primary():
        run.create()
        atomic_write(f"{run_dir}/config.yaml", config_text)
    distributed.barrier("run started")


def say(text: str) -> None:
    """A line of the run's report, from process 0 only."""
    from reasonrank_jax.distributed import is_primary

    if is_primary():
        print(text, flush=True)


def save_after_step(checkpointer, step: int, total_steps: int, saved, metadata, guard) -> bool:
    """Checkpoint after optimizer step `step` (every save_every, the last step, and at once when SIGTERM was
    received). True when the run must stop here (preempted)."""
    checkpointer.save(step, saved, metadata, force=step == total_steps)
    if _any_process(guard.requested) and step < total_steps:
        checkpointer.save(step, saved, metadata, force=True)
        return True
    return False


def _any_process(flag: bool) -> bool:
    """Whether `flag` holds on any process: all processes must stop at the same step (a SIGTERM may reach the hosts
    of a pod at different steps)."""
    import jax

    if jax.process_count() == 1:
        return flag
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))


def finish(command: str, run_dir: str, step: int, total_steps: int, preempted: bool, checkpointer, *logs) -> int:
    """Close the run's files; the exit code (143 after a preemption) and its one-line report."""
    checkpointer.close()
    for log in logs:
        log.close()
    if preempted:
        say(f"{command}: preempted; checkpoint of step {step} saved, rerun the same command to resume")
        return PREEMPTED_EXIT_CODE
    say(f"{command}: done, {total_steps} steps; checkpoints in {run_dir}/checkpoints")
    return 0


def format_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class StepTimer:
    """Wall time per step and throughput; the first step of each program (compilation) is not averaged."""

    def __init__(self):
        self.start = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.start = now - self.start, now
        return elapsed
