"""`reasonrank-jax launch xpk --config TRAIN.yaml --tpu v5p-64 --cluster C --project P --zone Z --workload W
(--docker-image IMG | --base-docker-image IMG) [KEY=VALUE ...]`: a training run as an XPK workload on a GKE cluster
of TPU slices: one container per TPU VM, every one running `REASONRANK_DISTRIBUTED=1 reasonrank-jax train sft|grpo
--config ...` (JAX's cluster detection finds the other pods on GKE, see `reasonrank_jax/distributed.py`).

The image must have this package and `jax[tpu]` installed (see README.md). With `--docker-image` it is used as it is
and the training YAML must be inside it (`--image-config`, default: the path as given); with `--base-docker-image`
xpk copies `--script-dir` (default: the YAML's directory) into the image at /app, its working directory.

`--dry-run` prints the one-time `xpk cluster create` as a comment (or as a command with `--create-cluster`) and the
`xpk workload create` command, shell-quoted; otherwise they run here. `--max-restarts` (default 10) lets the JobSet
restart the workload after a disruption: xpk restarts on exit codes 42 and 127-255 by default, which covers 143,
what `train` exits with after checkpointing on SIGTERM; it resumes from the latest checkpoint in train.out, so
train.out must be on storage the pods share and that outlives them (`xpk storage attach`, then `--storage NAME`).

XPK flags used, as defined in AI-Hypercomputer/xpk v1.13 (src/xpk/parser/workload.py, cluster.py, common.py; docs/
usage/workloads.md, docker.md, storage.md): `workload create --cluster --workload --command --tpu-type
--num-slices --priority --max-restarts --docker-image | --base-docker-image --script-dir --storage --project
--zone`; `cluster create --cluster --tpu-type --num-slices --on-demand | --spot | --reservation --project --zone`.
TPU types are xpk's names: v4-N, v5litepod-N, v5p-N, v6e-N (src/xpk/core/system_characteristics.py).
Checked against those sources, never run here against a real project.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys

from reasonrank_jax.config import ConfigCheckError, OneOf, option
from reasonrank_jax.distributed import ENV_DISTRIBUTED
from reasonrank_jax.errors import InputError
from reasonrank_jax.launch.tpu_vm import GCLOUD_INSTALL, check_name, parse_tpu, require_tool, run_steps

PRIORITIES = ("very-low", "low", "medium", "high", "very-high")
XPK_INSTALL = "install it with `pip install xpk` (it also needs gcloud, kubectl and docker)"


@dataclasses.dataclass(frozen=True)
class XpkLaunchConfig:
    TRAINING_CONFIG = True  # --config is the training YAML; KEY=VALUE override it

    tpu: str | None = option(required=True, metavar="TPU", help="TPU slice type: v4-32, v5e-16 (= v5litepod-16), "
                                                                "v5p-64, v6e-256, ...")
    cluster: str | None = option(required=True, help="the GKE cluster (made with `xpk cluster create`)")
    project: str | None = option(required=True, help="Google Cloud project id")
    zone: str | None = option(required=True, help="zone of the cluster's TPUs, e.g. us-east5-a")
    workload: str | None = option(required=True, help="name of the workload")
    docker_image: str | None = option(help="image with reasonrank-jax and jax[tpu] installed, used as it is")
    base_docker_image: str | None = option(help="image with reasonrank-jax and jax[tpu] installed; xpk adds "
                                                "--script-dir to it")
    script_dir: str | None = option(help="with --base-docker-image: the directory copied to /app (default: the "
                                         "training YAML's directory)")
    image_config: str | None = option(help="with --docker-image: the training YAML's path inside the image "
                                           "(default: the path as given)")
    num_slices: int = option(1, min=1, help="TPU slices")
    priority: str | None = option(choices=PRIORITIES, help="workload priority (xpk's default: medium)")
    max_restarts: int = option(10, min=0, help="restarts of the workload after a failure or preemption")
    storage: tuple[str, ...] = option((), help="xpk storages to mount (made with `xpk storage attach`), for "
                                               "train.out")
    trainer: str | None = option(choices=("sft", "grpo"), help="train sft or grpo (default: grpo when the YAML has "
                                                               "a grpo section)")
    spot: bool = option(False, help="for the cluster: Spot capacity (else on-demand)")
    reservation: str | None = option(help="for the cluster: this reservation's capacity")
    create_cluster: bool = option(False, help="also run (or print) the one-time `xpk cluster create` first")
    dry_run: bool = option(False, help="print the commands, one per line, and run nothing")
    config: str | None = option(flag=False, help="training YAML: runs `train sft|grpo --config` in every container")
    overrides: tuple[str, ...] = option((), flag=False, help="section.key=VALUE overrides of the training YAML")

    ONE_OF = (OneOf(("docker_image", "base_docker_image")),)

    def check(self) -> None:
        try:
            parse_tpu(self.tpu)
        except InputError as err:
            raise ConfigCheckError("tpu", str(err)) from None
        check_name(self.cluster, "cluster", 40)  # xpk's name_type: [a-z]([-a-z0-9]*[a-z0-9])?, at most 40
        check_name(self.workload, "workload", 40)
        if self.spot and self.reservation:
            raise ConfigCheckError("reservation", "give --spot or --reservation, not both")
        if self.script_dir and not self.base_docker_image:
            raise ConfigCheckError("script_dir", "goes with --base-docker-image")
        if self.image_config and not self.docker_image:
            raise ConfigCheckError("image_config", "goes with --docker-image")


def _image_flags(config: XpkLaunchConfig) -> tuple[tuple[str, ...], str]:
    """The image flags and the training YAML's path inside the container."""
    if config.docker_image:
        return (f"--docker-image={config.docker_image}",), config.image_config or config.config
    script_dir = os.path.abspath(config.script_dir or os.path.dirname(os.path.abspath(config.config)))
    inside = os.path.relpath(os.path.abspath(config.config), script_dir)
    if inside.startswith(".."):
        raise InputError(f"the training YAML must be inside --script-dir {script_dir} (it is copied to /app)",
                         path=config.config, field="--script-dir")
    return (f"--base-docker-image={config.base_docker_image}", f"--script-dir={script_dir}"), inside


def commands(config: XpkLaunchConfig) -> tuple[list[str], tuple[str, ...], tuple[str, ...]]:
    """(comment lines, `xpk cluster create`, `xpk workload create`), after checking the training YAML."""
    from reasonrank_jax.training.sections import load_training_config

    trainer, training = load_training_config(config.config, config.overrides, config.trainer)
    tpu = parse_tpu(config.tpu)
    where = (f"--project={config.project}", f"--zone={config.zone}")
    common = (f"--cluster={config.cluster}", f"--tpu-type={tpu.accelerator_type}", f"--num-slices={config.num_slices}")
    capacity = (f"--reservation={config.reservation}" if config.reservation else
                "--spot" if config.spot else "--on-demand")
    cluster = ("xpk", "cluster", "create", *common, capacity, *where)

    images, yaml_inside = _image_flags(config)
    command = shlex.join(["reasonrank-jax", "train", trainer, "--config", yaml_inside, *config.overrides])
    workload = ("xpk", "workload", "create", f"--workload={config.workload}", *common, *where, *images,
                f"--max-restarts={config.max_restarts}")
    workload += (f"--priority={config.priority}",) if config.priority else ()
    workload += tuple(f"--storage={name}" for name in config.storage)
    workload += ("--command", f"{ENV_DISTRIBUTED}=1 {command}")
    notes = [f"# reasonrank-jax launch xpk: {config.num_slices} x {tpu.accelerator_type} ({tpu.chips} chips per "
             f"slice); train {trainer}, train.out {training.train.out} (must be on storage every pod shares, "
             f"e.g. --storage)"]
    if config.docker_image:
        notes.append(f"# the training YAML must be at {yaml_inside} inside {config.docker_image} (--image-config)")
    return notes, cluster, workload


def render(config: XpkLaunchConfig) -> str:
    notes, cluster, workload = commands(config)
    first = [shlex.join(cluster)] if config.create_cluster else [f"# once per cluster: {shlex.join(cluster)}"]
    follow = (f"# then: xpk workload list --cluster={config.cluster} --project={config.project} "
              f"--zone={config.zone}")
    return "\n".join(notes + first + [shlex.join(workload), follow])


def _echo_run(argv) -> int:
    print(f"+ {shlex.join(argv)}", file=sys.stderr, flush=True)
    return subprocess.run(list(argv)).returncode


def run(config: XpkLaunchConfig) -> int:
    if config.dry_run:
        print(render(config))
        return 0
    notes, cluster, workload = commands(config)
    require_tool("xpk", XPK_INSTALL)
    require_tool("gcloud", GCLOUD_INSTALL)
    for note in notes:
        print(note, file=sys.stderr)
    return run_steps(([cluster] if config.create_cluster else []) + [workload], _echo_run)
