"""`reasonrank-jax launch tpu-vm --config TRAIN.yaml --tpu v5p-64 --zone Z --project P --name N [KEY=VALUE ...]`:
a training run on a Cloud TPU VM slice, as the gcloud commands that create the slice, put this package and the
training YAML on every worker, install them, and start `train sft|grpo` on all workers at once
(`REASONRANK_DISTRIBUTED=1`: every worker joins JAX's multi-host runtime, see `reasonrank_jax/distributed.py`).

`--dry-run` prints the commands, one per line, shell-quoted and copy-pasteable; otherwise they run here, in order,
and the first failure stops the launch with its exit code. `--resume-on-preemption` then watches the slice: when
`gcloud compute tpus tpu-vm describe` says PREEMPTED, the slice is deleted, recreated, set up again and the same
training command rerun; `train` resumes from the latest checkpoint in `train.out`, which must therefore live on
storage every worker shares and that outlives the VMs (`--gcs-bucket` mounts a bucket with Cloud Storage FUSE).

Flags and values as documented (checked against the documentation, never run here against a real project):
- `gcloud compute tpus tpu-vm create TPU --zone --project --accelerator-type --version [--spot | --preemptible]`,
  `ssh TPU --worker=all --command`, `scp SRC... TPU:DEST --worker=all`, `describe TPU --format`, `delete --quiet`
  (cloud.google.com/sdk/gcloud/reference/compute/tpus/tpu-vm/{create,ssh,scp,describe,delete}); a preempted TPU
  shows the state PREEMPTED and Spot TPUs must be recreated after preemption (cloud.google.com/tpu/docs/preemptible,
  /tpu/docs/spot).
- Runtime versions for JAX (cloud.google.com/tpu/docs/runtimes): v6e `v2-alpha-tpuv6e`, v5p `v2-alpha-tpuv5`,
  v5e `v2-alpha-tpuv5-lite`, v4 `tpu-ubuntu2204-base`.
- Accelerator types (cloud.google.com/tpu/docs/v4, /v5p, /v5e, /v6e): for v4 and v5p the number counts TensorCores,
  2 per chip, 4 chips per host (v5p-64: 32 chips, 8 hosts); for v5e (`v5litepod-N`) and v6e it counts chips: 1, 4
  or 8 chips are one VM, larger slices have 4 chips per VM (v6e-256: 64 VMs).
- The TPU images' python3 is Ubuntu 22.04's (3.10) and this package needs 3.11+: each worker gets a virtual
  environment made by uv (`uv venv --python`, which downloads the interpreter; docs.astral.sh/uv/pip/environments).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from reasonrank_jax.config import ConfigCheckError, option
from reasonrank_jax.distributed import ENV_DISTRIBUTED
from reasonrank_jax.errors import InputError

# The TPU software (runtime) version for JAX on each generation (cloud.google.com/tpu/docs/runtimes).
RUNTIME_VERSIONS = {"v4": "tpu-ubuntu2204-base", "v5e": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5",
                    "v6e": "v2-alpha-tpuv6e"}
GCLOUD_INSTALL = "install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install), then run `gcloud init`"
_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


# --- TPU slice shapes ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TpuType:
    """A Cloud TPU slice. ``hosts`` counts TPU VMs (workers): one JAX process each."""

    generation: str        # v4 | v5e | v5p | v6e
    accelerator_type: str  # as gcloud's --accelerator-type and xpk's --tpu-type want it: v5litepod-16, v5p-64
    chips: int
    hosts: int
    chips_per_host: int


def parse_tpu(name: str) -> TpuType:
    """'v5p-64' -> TpuType('v5p', 'v5p-64', chips=32, hosts=8, chips_per_host=4); an InputError for others. The
    shapes are those `plan` compiles for (reasonrank_jax/scale/topology.py)."""
    from reasonrank_jax.scale.topology import parse_slice

    tpu = parse_slice(name, field="--tpu")
    generation = tpu.generation.name
    prefix = "v5litepod" if generation == "v5e" else generation
    return TpuType(generation, f"{prefix}-{tpu.chips * tpu.generation.cores_per_chip}", tpu.chips, tpu.hosts,
                   tpu.chips_per_host)


def describe_tpu(tpu: TpuType) -> str:
    hosts = "1 host" if tpu.hosts == 1 else f"{tpu.hosts} hosts"
    return f"{tpu.accelerator_type} = {tpu.chips} chips on {hosts} ({tpu.chips_per_host} chips each)"


def check_name(value: str | None, key: str, longest: int) -> None:
    if value is not None and (not _NAME.fullmatch(value) or len(value) > longest):
        raise ConfigCheckError(key, f"expected lowercase letters, digits and hyphens, starting with a letter, "
                                    f"at most {longest} characters; got {value!r}")


# --- the config ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TpuVmLaunchConfig:
    TRAINING_CONFIG = True  # --config is the training YAML; KEY=VALUE override it

    tpu: str | None = option(required=True, metavar="TPU", help="TPU slice: v4-32, v5e-16 (= v5litepod-16), v5p-64, "
                                                                "v6e-256, ...")
    zone: str | None = option(required=True, help="zone of the TPU, e.g. us-east5-a")
    project: str | None = option(required=True, help="Google Cloud project id")
    name: str | None = option(required=True, help="name of the TPU VM slice")
    version: str | None = option(help="TPU software version (default: v4 tpu-ubuntu2204-base, v5e v2-alpha-tpuv5-lite, "
                                      "v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e)")
    spot: bool = option(False, help="create a Spot TPU (preemptible at any time, much cheaper)")
    preemptible: bool = option(False, help="create a preemptible TPU (the older kind; prefer --spot)")
    trainer: str | None = option(choices=("sft", "grpo"), help="train sft or grpo (default: grpo when the YAML has "
                                                               "a grpo section)")
    workdir: str = option("reasonrank", help="directory on every worker (relative: to the home directory) for the "
                                             "package, the training YAML and the virtual environment")
    wheel: str | None = option(help="what to install on the workers: a wheel file here (copied to them) or a pip "
                                    "requirement such as 'reasonrank-jax @ git+https://...' (default: a wheel built "
                                    "from this checkout)")
    python: str = option("3.11", help="Python version of the workers' virtual environment (uv downloads it)")
    gcs_bucket: str | None = option(help="mount this Cloud Storage bucket with gcsfuse on every worker, at "
                                         "--mount-dir (for train.out)")
    mount_dir: str = option("/mnt/gcs", help="where --gcs-bucket is mounted on the workers")
    resume_on_preemption: bool = option(False, help="watch the slice: when it is PREEMPTED, delete and recreate it "
                                                    "and rerun the training command, which resumes from train.out")
    max_restarts: int = option(20, min=0, help="with --resume-on-preemption: recreations at most")
    poll: float = option(60.0, min=1.0, help="with --resume-on-preemption: seconds between state checks")
    dry_run: bool = option(False, help="print the commands, one per line, and run nothing")
    config: str | None = option(flag=False, help="training YAML: runs `train sft|grpo --config` on every worker")
    overrides: tuple[str, ...] = option((), flag=False, help="section.key=VALUE overrides of the training YAML")

    def check(self) -> None:
        try:
            parse_tpu(self.tpu)
        except InputError as err:
            raise ConfigCheckError("tpu", str(err)) from None
        check_name(self.name, "name", 63)
        if self.spot and self.preemptible:
            raise ConfigCheckError("preemptible", "give --spot or --preemptible, not both")
        if self.workdir.startswith("~") or not self.workdir.strip("/"):
            raise ConfigCheckError("workdir", f"give a directory relative to the home directory (or absolute), "
                                              f"got {self.workdir!r}")
        if not self.mount_dir.startswith("/"):
            raise ConfigCheckError("mount_dir", f"must be an absolute path, got {self.mount_dir!r}")


# --- the commands (pure) ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Plan:
    notes: tuple[str, ...]                    # comment lines printed before the commands
    build: tuple[str, ...] | None             # a local command run once (the wheel), or None
    provision: tuple[tuple[str, ...], ...]    # create the slice and set up every worker
    train: tuple[str, ...]                    # the training command on every worker
    describe: tuple[str, ...]                 # prints the slice's state (READY, PREEMPTED, ...)
    delete: tuple[str, ...]


def project_root() -> Path | None:
    """This checkout's root (the directory with pyproject.toml), or None for an installed package."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def _local_wheel(root: Path) -> tuple[tuple[str, ...], Path]:
    """The command building this checkout's wheel into ROOT/dist, and the wheel it writes."""
    import tomllib

    with open(root / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    name = re.sub(r"[-_.]+", "_", project["name"]).lower()
    wheel = root / "dist" / f"{name}-{project['version']}-py3-none-any.whl"
    return (sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(wheel.parent), str(root)), wheel


def _package(wheel: str | None) -> tuple[tuple[str, ...] | None, Path | None, str | None]:
    """(local build command, local wheel file to copy, pip requirement) for --wheel."""
    if wheel is None:
        root = project_root()
        if root is None:
            raise InputError("not a checkout of this project, so there is no wheel to build: give --wheel FILE.whl "
                             "or a pip requirement", field="--wheel")
        build, path = _local_wheel(root)
        return build, path, None
    if os.path.isfile(wheel):
        return None, Path(wheel).resolve(), None
    looks_like_path = os.sep in wheel and "://" not in wheel and "@" not in wheel
    if wheel.endswith((".whl", ".tar.gz", ".zip")) or looks_like_path:
        raise InputError("no such file", path=wheel, field="--wheel")
    return None, None, wheel


def _remote(workdir: str, name: str) -> str:
    return f"{workdir.rstrip('/')}/{name}"


def gcloud_tpu(verb: str, config: TpuVmLaunchConfig, *args: str) -> tuple[str, ...]:
    return ("gcloud", "compute", "tpus", "tpu-vm", verb, *args, f"--zone={config.zone}", f"--project={config.project}")


def on_workers(config: TpuVmLaunchConfig, command: str) -> tuple[str, ...]:
    """`command` run by the shell of every worker at once."""
    return gcloud_tpu("ssh", config, config.name) + ("--worker=all", "--command", command)


def mount_script(bucket: str, mount_dir: str) -> str:
    """Install Cloud Storage FUSE (the apt repository of cloud.google.com/storage/docs/gcsfuse-install) when it is
    missing, and mount `bucket` at `mount_dir` unless something is mounted there already."""
    repo = ('echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt '
            'gcsfuse-$(lsb_release -c -s) main" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null')
    key = ("curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | "
           "sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null")
    install = f"{repo} && {key} && sudo apt-get update -q && sudo apt-get install -y -q gcsfuse"
    mount = shlex.quote(mount_dir)
    return (f"(command -v gcsfuse >/dev/null || ({install})) && sudo mkdir -p {mount} && "
            f"sudo chown \"$(id -u):$(id -g)\" {mount} && "
            f"(mountpoint -q {mount} || gcsfuse --implicit-dirs {shlex.quote(bucket)} {mount})")


def install_script(workdir: str, python: str, package: str) -> str:
    """A virtual environment with `python` (uv downloads it) in WORKDIR/venv, with `package` (a shell word: the
    copied wheel or a pip requirement) and jax[tpu] (JAX with libtpu; the project declares no [tpu] extra)."""
    venv = shlex.quote(_remote(workdir, "venv"))
    uv = "~/.local/bin/uv"
    return (f"python3 -m pip install --user --upgrade uv && {uv} venv --clear --python {shlex.quote(python)} {venv} && "
            f'{uv} pip install --python {venv}/bin/python {package} "jax[tpu]"')


def train_argv(trainer: str, config_name: str, overrides: tuple[str, ...]) -> list[str]:
    return ["train", trainer, "--config", config_name, *overrides]


def plan_of(config: TpuVmLaunchConfig) -> Plan:
    """Every command of the launch, after checking the training YAML (a bad one is an InputError)."""
    from reasonrank_jax.training.sections import load_training_config

    trainer, training = load_training_config(config.config, config.overrides, config.trainer)
    tpu = parse_tpu(config.tpu)
    version = config.version or RUNTIME_VERSIONS[tpu.generation]
    build, wheel, requirement = _package(config.wheel)
    workdir, yaml_name = config.workdir, os.path.basename(config.config)

    create = gcloud_tpu("create", config, config.name) + (f"--accelerator-type={tpu.accelerator_type}",
                                                          f"--version={version}")
    create += ("--spot",) if config.spot else ("--preemptible",) if config.preemptible else ()
    copies = [str(wheel)] if wheel else []
    copies.append(str(Path(config.config).resolve()))
    scp = ("gcloud", "compute", "tpus", "tpu-vm", "scp", *copies, f"{config.name}:{workdir.rstrip('/')}/",
           "--worker=all", f"--zone={config.zone}", f"--project={config.project}")
    provision = [create, on_workers(config, f"mkdir -p {shlex.quote(workdir)}"), scp]
    bucket = config.gcs_bucket.removeprefix("gs://").strip("/") if config.gcs_bucket else None
    if bucket:
        provision.append(on_workers(config, mount_script(bucket, config.mount_dir)))
    package = shlex.quote(_remote(workdir, wheel.name)) if wheel else shlex.quote(requirement)
    provision.append(on_workers(config, install_script(workdir, config.python, package)))
    command = shlex.join(["venv/bin/reasonrank-jax", *train_argv(trainer, yaml_name, config.overrides)])
    train = on_workers(config, f"cd {shlex.quote(workdir)} && {ENV_DISTRIBUTED}=1 {command}")

    out = training.train.out
    notes = [f"# reasonrank-jax launch tpu-vm: {describe_tpu(tpu)}, runtime {version}; train {trainer}, "
             f"train.out {out}"]
    if bucket and not _under(out, config.mount_dir):
        notes.append(f"# warning: train.out {out} is not under {config.mount_dir}, where gs://{bucket} is mounted")
    elif not bucket:
        notes.append("# train.out must be on storage every worker shares and that outlives the VMs "
                     "(e.g. --gcs-bucket, or Filestore)")
    return Plan(tuple(notes), build, tuple(provision), train,
                gcloud_tpu("describe", config, config.name) + ("--format=value(state)",),
                gcloud_tpu("delete", config, config.name) + ("--quiet",))


def _under(path: str, directory: str) -> bool:
    path, directory = os.path.normpath(path), os.path.normpath(directory)
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def render(plan: Plan, config: TpuVmLaunchConfig) -> str:
    """The dry run: comments, then one shell-quoted command per line."""
    lines = list(plan.notes)
    lines += [shlex.join(argv) for argv in ([plan.build] if plan.build else []) + list(plan.provision)]
    lines.append(shlex.join(plan.train))
    if config.resume_on_preemption:
        lines += [f"# --resume-on-preemption: every {config.poll:g} s and when the training command ends without "
                  f"success, the state is read with",
                  f"#   {shlex.join(plan.describe)}",
                  f"# and on PREEMPTED (at most {config.max_restarts} times) the slice is deleted with",
                  f"#   {shlex.join(plan.delete)}",
                  "# then created, set up and trained again as above (without the local build): train resumes "
                  "from the latest checkpoint in train.out"]
    lines.append(f"# when done, delete the slice: {shlex.join(plan.delete)}")
    return "\n".join(lines)


# --- running them -------------------------------------------------------------------------------------------

def require_tool(name: str, how: str) -> None:
    if shutil.which(name) is None:
        raise InputError(f"`{name}` is not on PATH: {how}", field=name)


def run_steps(steps, run_one) -> int:
    """Run the commands in order; the first failure's exit code, else 0."""
    for argv in steps:
        code = run_one(argv)
        if code:
            print(f"launch: `{shlex.join(argv)}` exited with {code}", file=sys.stderr)
            return code
    return 0


def train_resuming(plan: Plan, max_restarts: int, run_one, run_training, state) -> int:
    """Run the training command; while it fails because the slice was preempted, recreate it and run it again."""
    restarts = 0
    while True:
        code = run_training(plan.train)
        if code == 0:
            return 0
        current = state()
        if current != "PREEMPTED":
            print(f"launch tpu-vm: training exited with {code}, the TPU is {current or 'in an unknown state'}: "
                  f"not a preemption, stopping", file=sys.stderr)
            return code
        if restarts >= max_restarts:
            print(f"launch tpu-vm: preempted again after {restarts} restarts (--max-restarts): stopping",
                  file=sys.stderr)
            return code
        restarts += 1
        print(f"launch tpu-vm: the TPU was preempted; recreating it and resuming (restart {restarts} of at most "
              f"{max_restarts})", file=sys.stderr)
        code = run_steps([plan.delete, *plan.provision], run_one)
        if code:
            return code


def _echo_run(argv) -> int:
    print(f"+ {shlex.join(argv)}", file=sys.stderr, flush=True)
    return subprocess.run(list(argv)).returncode


def _state(describe) -> str:
    result = subprocess.run(list(describe), capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else ""


def _run_watched(argv, state, poll_s: float) -> int:
    """Run `argv`; stop it when the slice turns PREEMPTED (its ssh sessions may hang on dead workers)."""
    print(f"+ {shlex.join(argv)}", file=sys.stderr, flush=True)
    proc = subprocess.Popen(list(argv))
    while True:
        try:
            return proc.wait(timeout=poll_s)
        except subprocess.TimeoutExpired:
            if state() == "PREEMPTED":
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                return proc.returncode or 1


def run(config: TpuVmLaunchConfig) -> int:
    plan = plan_of(config)
    if config.dry_run:
        print(render(plan, config))
        return 0
    require_tool("gcloud", GCLOUD_INSTALL)
    for note in plan.notes:
        print(note, file=sys.stderr)
    code = run_steps(([plan.build] if plan.build else []) + list(plan.provision), _echo_run)
    if code:
        return code
    if not config.resume_on_preemption:
        return _echo_run(plan.train)

    def state():
        return _state(plan.describe)

    return train_resuming(plan, config.max_restarts, _echo_run,
                          lambda argv: _run_watched(argv, state, config.poll), state)
