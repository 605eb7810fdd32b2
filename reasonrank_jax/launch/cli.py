"""`reasonrank-jax launch tpu-vm|xpk|local`: run a command on every host of a TPU pod, a GKE cluster, or as N
processes on this machine. See README.md in this directory."""

from __future__ import annotations

from reasonrank_jax.launch.local import LocalLaunchConfig

SUBCOMMANDS = {
    "local": (LocalLaunchConfig, "run_local",
              "run a command as N processes on this machine (CPU devices, gloo collectives), as a pod would"),
}


def run_local(config: LocalLaunchConfig) -> int:
    from reasonrank_jax.launch.local import run

    return run(config)
