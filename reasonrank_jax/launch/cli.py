"""`reasonrank-jax launch tpu-vm|xpk|local`: run a command on every host of a TPU pod, a GKE cluster, or as N
processes on this machine. See README.md in this directory."""

from __future__ import annotations

from reasonrank_jax.launch.local import LocalLaunchConfig
from reasonrank_jax.launch.tpu_vm import TpuVmLaunchConfig
from reasonrank_jax.launch.xpk import XpkLaunchConfig

SUBCOMMANDS = {
    "tpu-vm": (TpuVmLaunchConfig, "run_tpu_vm",
               "create a Cloud TPU VM slice, install this package on every host and train there (gcloud)"),
    "xpk": (XpkLaunchConfig, "run_xpk", "submit a training run as an XPK workload on a GKE cluster of TPU slices"),
    "local": (LocalLaunchConfig, "run_local",
              "run a command as N processes on this machine (CPU devices, gloo collectives), as a pod would"),
}


def run_tpu_vm(config: TpuVmLaunchConfig) -> int:
    from reasonrank_jax.launch.tpu_vm import run

    return run(config)


def run_xpk(config: XpkLaunchConfig) -> int:
    from reasonrank_jax.launch.xpk import run

    return run(config)


def run_local(config: LocalLaunchConfig) -> int:
    from reasonrank_jax.launch.local import run

    return run(config)
