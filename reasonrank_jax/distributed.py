"""JAX's multi-host runtime: one process per host (TPU VM worker, GKE pod, or `launch local` process).

`initialize()` joins it when this process is one of several, and must run before anything touches a jax backend.
It decides from the environment, never from the network:

- `REASONRANK_NUM_PROCESSES`, `REASONRANK_PROCESS_ID` and `JAX_COORDINATOR_ADDRESS` (what `launch local` sets):
  explicit values, CPU collectives over gloo;
- `REASONRANK_DISTRIBUTED=1` (what `launch tpu-vm` and `launch xpk` set): JAX's own cluster detection (Cloud TPU
  VMs, GKE, SLURM) picks the coordinator, process count and id;
- otherwise (or `REASONRANK_DISTRIBUTED=0`): a single process, nothing to join.

Every process then runs the same program; the helpers below keep side effects (files, progress, metrics) on
process 0 and let every process see the same decisions.
"""

from __future__ import annotations

import os

from reasonrank_jax.errors import InputError

ENV_NUM_PROCESSES = "REASONRANK_NUM_PROCESSES"
ENV_PROCESS_ID = "REASONRANK_PROCESS_ID"
ENV_DISTRIBUTED = "REASONRANK_DISTRIBUTED"
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"  # read by jax.distributed itself too
# How long a process that is done (or failed) waits at exit for the others (JAX's default, 300 s, holds a failed
# local job for 5 minutes).
SHUTDOWN_TIMEOUT_S = 60


def _int_env(name: str) -> int:
    try:
        return int(os.environ[name])
    except ValueError:
        raise InputError(f"must be an integer, got {os.environ[name]!r}", field=f"${name}") from None


def requested() -> bool:
    """Whether the environment asks for the multi-host runtime."""
    flag = os.environ.get(ENV_DISTRIBUTED, "")
    if flag == "0":
        return False
    return flag == "1" or ENV_NUM_PROCESSES in os.environ


def initialize() -> None:
    """Join the multi-host runtime when the environment asks for it (see the module docstring); idempotent."""
    import jax
    from jax._src import distributed as jax_distributed

    if not requested() or jax_distributed.global_state.client is not None:
        return
    if ENV_NUM_PROCESSES in os.environ:
        num_processes, process_id = _int_env(ENV_NUM_PROCESSES), _int_env(ENV_PROCESS_ID)
        if ENV_COORDINATOR not in os.environ:
            raise InputError(f"is needed with ${ENV_NUM_PROCESSES}", field=f"${ENV_COORDINATOR}")
        if not 0 <= process_id < num_processes:
            raise InputError(f"must be in [0, {num_processes}), got {process_id}", field=f"${ENV_PROCESS_ID}")
        jax.distributed.initialize(coordinator_address=os.environ[ENV_COORDINATOR], num_processes=num_processes,
                                   process_id=process_id, shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S)
    else:
        jax.distributed.initialize(shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S)


def is_primary() -> bool:
    """Process 0: the one that writes shared files, prints progress and logs metrics."""
    import jax

    return jax.process_index() == 0


_BARRIER_WAIT_MS = 20 * 24 * 3600 * 1000  # processes may reach a barrier hours apart (rerank); int32 milliseconds
_barriers_passed = 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (no-op in a single process). On JAX's coordination
    service, not a device collective: gloo's first collective gives up when processes arrive 30 s apart. Every
    process passes the same barriers in the same order, so a count makes each one's id unique."""
    import jax
    from jax._src import distributed as jax_distributed

    global _barriers_passed
    if jax.process_count() == 1:
        return
    _barriers_passed += 1
    jax_distributed.global_state.client.wait_at_barrier(f"reasonrank-{_barriers_passed}-{name}", _BARRIER_WAIT_MS)
