"""`reasonrank-jax launch local -n N [--cpu-devices D] (--config TRAIN.yaml [KEY=VALUE ...] | -- COMMAND ...)`:
the command as N processes on this machine, each with D virtual CPU devices, joined by JAX's multi-host runtime
(coordinator on 127.0.0.1, CPU collectives over gloo). A pod in miniature: what runs here runs on N hosts.

Process 0's output is this command's; the others' go to a log each (printed when one fails). When one process
fails, the rest are stopped; SIGTERM / SIGINT are passed on to every process (a training run checkpoints and
exits 143, as after a preemption), and the exit code is the first failing process's.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from reasonrank_jax.config import option
from reasonrank_jax.distributed import ENV_COORDINATOR, ENV_DISTRIBUTED, ENV_NUM_PROCESSES, ENV_PROCESS_ID
from reasonrank_jax.errors import InputError


@dataclasses.dataclass(frozen=True)
class LocalLaunchConfig:
    TRAINING_CONFIG = True  # --config is the training YAML; KEY=VALUE override it

    num_processes: int = option(2, min=1, short="-n", help="processes")
    cpu_devices: int = option(4, min=1, help="virtual CPU devices per process")
    port: int | None = option(min=1, max=65535, help="coordinator port on 127.0.0.1 (default: a free one)")
    trainer: str | None = option(choices=("sft", "grpo"), help="with --config: train sft or grpo (default: grpo "
                                                               "when the YAML has a grpo section)")
    command: tuple[str, ...] = option((), rest=True, metavar="COMMAND",
                                      help="a reasonrank-jax command and its arguments, after -- (instead of "
                                           "--config)")
    config: str | None = option(flag=False, help="training YAML: runs `train sft|grpo --config` on every process")
    overrides: tuple[str, ...] = option((), flag=False, help="section.key=VALUE overrides of the training YAML")


def command_of(config) -> list[str]:
    """The reasonrank-jax arguments every process runs."""
    if config.command and config.config:
        raise InputError("give either --config TRAIN.yaml or a command after --, not both", field="--config")
    if config.command:
        return list(config.command)
    if not config.config:
        raise InputError("nothing to run: give --config TRAIN.yaml or a command after --", field="--config")
    from reasonrank_jax.training.sections import load_training_config

    trainer, _ = load_training_config(config.config, config.overrides, config.trainer)  # bad input fails here
    return ["train", trainer, "--config", config.config, *config.overrides]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(base: dict, process_id: int, num_processes: int, cpu_devices: int, port: int) -> dict:
    env = dict(base)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env.update({
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": " ".join(flags + [f"--xla_force_host_platform_device_count={cpu_devices}"]),
        ENV_COORDINATOR: f"127.0.0.1:{port}",
        ENV_NUM_PROCESSES: str(num_processes),
        ENV_PROCESS_ID: str(process_id),
    })
    env.pop(ENV_DISTRIBUTED, None)
    return env


def _tail(path: str, lines: int = 20) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def run(config: LocalLaunchConfig) -> int:
    argv = command_of(config)
    port = config.port or free_port()
    log_dir = tempfile.mkdtemp(prefix="reasonrank-launch-")
    procs, logs = [], []
    for i in range(config.num_processes):
        env = process_env(os.environ, i, config.num_processes, config.cpu_devices, port)
        if i == 0:
            out = None
        else:
            logs.append(os.path.join(log_dir, f"process-{i}.log"))
            out = open(logs[-1], "w", encoding="utf-8")
        procs.append(subprocess.Popen([sys.executable, "-m", "reasonrank_jax", *argv], env=env, stdout=out,
                                      stderr=subprocess.STDOUT if out else None))
        if out:
            out.close()

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = _wait_all(procs)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if code not in (0, 143):
        for i, path in enumerate(logs, start=1):
            if procs[i].returncode not in (0, None):
                print(f"launch local: process {i} exited with {procs[i].returncode}; its last lines ({path}):\n"
                      f"{_tail(path)}", file=sys.stderr)
    return code


def _wait_all(procs, grace_s: float = 30.0) -> int:
    """Wait for every process; once one fails, stop the others. The first failure's exit code, else 0."""
    first_failure = None
    while any(p.poll() is None for p in procs):
        for p in procs:
            if p.returncode not in (None, 0) and first_failure is None:
                first_failure = p.returncode
                deadline = time.monotonic() + grace_s
                for q in procs:
                    if q.poll() is None:
                        q.terminate()
        if first_failure is not None and time.monotonic() > deadline:
            for q in procs:
                if q.poll() is None:
                    q.kill()
        time.sleep(0.1)
    codes = [p.returncode for p in procs]
    return first_failure if first_failure is not None else next((c for c in codes if c), 0)
