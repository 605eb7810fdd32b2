"""`launch tpu-vm` and `launch xpk`: the commands of a dry run, parsed back with shlex and checked flag by flag against
the documented gcloud / xpk flags; bad input; TPU slice shapes; the preemption loop with fake commands. No
credentials, network or gcloud needed."""

import shlex

import pytest

from reasonrank_jax.cli import main
from reasonrank_jax.errors import InputError
from reasonrank_jax.launch import tpu_vm
from reasonrank_jax.launch.tpu_vm import TpuType, parse_tpu

SFT_YAML = """\
model:
  path: {root}/model
data:
  path: {root}/sft.json
  max_length: 512
train:
  out: /mnt/gcs/runs/sft1
  steps: 20
  global_batch: 8
  micro_batch: 8
"""
TPU_VM = ["launch", "tpu-vm", "--tpu", "v5p-64", "--zone", "us-east5-a", "--project", "my-proj", "--name", "rr-pod"]
XPK = ["launch", "xpk", "--tpu", "v5p-64", "--cluster", "rr-cluster", "--project", "my-proj", "--zone", "us-east5-a",
       "--workload", "sft-1"]
IMAGE = "us-docker.pkg.dev/my-proj/rr/reasonrank-jax:0.1.0"


@pytest.fixture
def sft_yaml(tmp_path):
    path = tmp_path / "sft tiny.yaml"  # a space: every command must quote it
    path.write_text(SFT_YAML.format(root=tmp_path))
    return path


def _dry_run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    commands = [shlex.split(line) for line in lines if not line.startswith("#")]
    return commands, [line for line in lines if line.startswith("#")]


def _gcloud(commands, verb):
    return [c for c in commands if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", verb]]


def _command_of(argv):
    """The value of --command (given as its own argument)."""
    return argv[argv.index("--command") + 1]


def _fails(capsys, argv, *fragments):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


# --- launch tpu-vm ------------------------------------------------------------------------------------------

def test_tpu_vm_dry_run_v5p_64(capsys, sft_yaml):
    commands, notes = _dry_run(capsys, TPU_VM + ["--config", str(sft_yaml), "--dry-run", "train.steps=10",
                                                 "train.out=/mnt/gcs/runs/sft 1"])
    assert "32 chips on 8 hosts" in notes[0] and "v2-alpha-tpuv5" in notes[0]
    where = ["--zone=us-east5-a", "--project=my-proj"]

    [create] = _gcloud(commands, "create")
    assert create[5] == "rr-pod"
    assert set(where + ["--accelerator-type=v5p-64", "--version=v2-alpha-tpuv5"]) <= set(create[6:])
    assert "--spot" not in create and "--preemptible" not in create

    [scp] = _gcloud(commands, "scp")
    assert set(where + ["--worker=all"]) <= set(scp)
    assert str(sft_yaml) in scp and "rr-pod:reasonrank/" in scp
    wheel = next(arg for arg in scp if arg.endswith(".whl"))
    build = commands[0]  # the wheel is built from this checkout first, before anything is created
    assert build[1:4] == ["-m", "pip", "wheel"] and wheel.startswith(build[build.index("--wheel-dir") + 1])

    ssh = _gcloud(commands, "ssh")
    for argv in ssh:
        assert argv[5] == "rr-pod" and set(where + ["--worker=all"]) <= set(argv)
    install = _command_of(ssh[-2])
    assert "jax[tpu]" in install and "uv venv --clear --python 3.11 reasonrank/venv" in install
    assert wheel.rsplit("/", 1)[1] in install

    train = _command_of(ssh[-1])
    assert commands[-1] == ssh[-1]  # the training command comes last
    assert train.startswith("cd reasonrank && REASONRANK_DISTRIBUTED=1 ")
    words = shlex.split(train.split("&& ", 1)[1])
    assert words[0] == "REASONRANK_DISTRIBUTED=1"
    assert words[1:] == ["venv/bin/reasonrank-jax", "train", "sft", "--config", "sft tiny.yaml", "train.steps=10",
                         "train.out=/mnt/gcs/runs/sft 1"]
    assert "REASONRANK_DISTRIBUTED=1" in train and "train sft --config" in train


def test_tpu_vm_options_spot_version_wheel_and_mount(capsys, sft_yaml, tmp_path):
    wheel = tmp_path / "reasonrank_jax-9.9-py3-none-any.whl"
    wheel.write_bytes(b"")
    commands, notes = _dry_run(capsys, TPU_VM + [
        "--config", str(sft_yaml), "--dry-run", "--spot", "--version", "v2-alpha-tpuv5-custom", "--wheel", str(wheel),
        "--gcs-bucket", "gs://my-bucket", "--workdir", "rr"])
    [create] = _gcloud(commands, "create")
    assert "--spot" in create and "--version=v2-alpha-tpuv5-custom" in create
    assert commands[0][:2] == ["gcloud", "compute"]  # a given wheel: nothing built here
    [scp] = _gcloud(commands, "scp")
    assert str(wheel) in scp and "rr-pod:rr/" in scp
    ssh = [_command_of(argv) for argv in _gcloud(commands, "ssh")]
    assert ssh[0] == "mkdir -p rr"
    assert "gcsfuse --implicit-dirs my-bucket /mnt/gcs" in ssh[1]
    assert f"rr/{wheel.name}" in ssh[2] and ssh[3].startswith("cd rr && ")
    assert not any("warning" in note for note in notes)  # train.out is under the mount

    commands, notes = _dry_run(capsys, TPU_VM + ["--config", str(sft_yaml), "--dry-run", "--preemptible",
                                                 "--wheel", "reasonrank-jax==0.1.0", "--gcs-bucket", "b",
                                                 "--mount-dir", "/mnt/elsewhere"])
    assert "--preemptible" in _gcloud(commands, "create")[0]
    [scp] = _gcloud(commands, "scp")
    assert not any(arg.endswith(".whl") for arg in scp)  # a requirement: pip fetches it on the workers
    assert "reasonrank-jax==0.1.0" in _command_of(_gcloud(commands, "ssh")[2])
    assert any("warning: train.out /mnt/gcs/runs/sft1 is not under /mnt/elsewhere" in note for note in notes)


def test_tpu_vm_runtime_per_generation_and_resume_loop_printed(capsys, sft_yaml):
    for tpu, accelerator, version in [("v4-32", "v4-32", "tpu-ubuntu2204-base"),
                                      ("v5e-16", "v5litepod-16", "v2-alpha-tpuv5-lite"),
                                      ("v6e-256", "v6e-256", "v2-alpha-tpuv6e")]:
        argv = TPU_VM + ["--config", str(sft_yaml), "--dry-run"]
        argv[argv.index("v5p-64")] = tpu
        [create] = _gcloud(_dry_run(capsys, argv)[0], "create")
        assert f"--accelerator-type={accelerator}" in create and f"--version={version}" in create
    commands, notes = _dry_run(capsys, TPU_VM + ["--config", str(sft_yaml), "--dry-run", "--resume-on-preemption",
                                                 "--max-restarts", "3"])
    described = [shlex.split(note.lstrip("# ")) for note in notes if "describe" in note]
    assert described == [["gcloud", "compute", "tpus", "tpu-vm", "describe", "rr-pod", "--zone=us-east5-a",
                          "--project=my-proj", "--format=value(state)"]]
    assert any("delete rr-pod" in note and "--quiet" in note for note in notes)
    assert any("at most 3 times" in note for note in notes)


def test_tpu_vm_bad_input(capsys, sft_yaml, tmp_path):
    good = TPU_VM + ["--config", str(sft_yaml), "--dry-run"]
    for tpu in ("v3-8", "v5p-60", "v6e-12", "tpu"):
        argv = list(good)
        argv[argv.index("v5p-64")] = tpu
        _fails(capsys, argv, "[--tpu]", tpu)
    missing_zone = [a for a in good if a not in ("--zone", "us-east5-a")]
    _fails(capsys, missing_zone, "--zone")
    _fails(capsys, good + ["--spot", "--preemptible"], "--preemptible")
    _fails(capsys, [a if a != "rr-pod" else "RR_pod" for a in good], "[--name]")
    _fails(capsys, good + ["--wheel", str(tmp_path / "missing.whl")], "missing.whl", "no such file")

    bad = tmp_path / "bad.yaml"
    bad.write_text(SFT_YAML.format(root=tmp_path).replace("steps: 20", "steps: many"))
    argv = list(good)
    argv[argv.index(str(sft_yaml))] = str(bad)
    _fails(capsys, argv, str(bad), "train.steps")
    _fails(capsys, good + ["train.nope=1"], "train.nope=1")
    _fails(capsys, [a for a in good if a not in ("--config", str(sft_yaml))], "--config")


def test_tpu_vm_without_gcloud_says_how_to_install(capsys, sft_yaml, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    _fails(capsys, TPU_VM + ["--config", str(sft_yaml)], "gcloud", "https://cloud.google.com/sdk/docs/install")


def test_resume_loop_recreates_only_after_a_preemption(sft_yaml):
    config = tpu_vm.TpuVmLaunchConfig(tpu="v5p-64", zone="z", project="p", name="n", config=str(sft_yaml),
                                      wheel="reasonrank-jax")
    plan = tpu_vm.plan_of(config)
    ran, codes, states = [], iter([255, 143, 0]), iter(["PREEMPTED", "PREEMPTED"])

    def run_one(argv):
        ran.append(argv[4])
        return 0

    code = tpu_vm.train_resuming(plan, 5, run_one, lambda argv: ran.append("train") or next(codes),
                                 lambda: next(states))
    setup = ["delete", "create", "ssh", "scp", "ssh"]
    assert code == 0 and ran == ["train", *setup, "train", *setup, "train"]

    ran.clear()
    code = tpu_vm.train_resuming(plan, 5, run_one, lambda argv: ran.append("train") or 1, lambda: "READY")
    assert code == 1 and ran == ["train"]  # a real failure: nothing recreated
    ran.clear()
    code = tpu_vm.train_resuming(plan, 1, run_one, lambda argv: ran.append("train") or 143, lambda: "PREEMPTED")
    assert code == 143 and ran == ["train", *setup, "train"]  # --max-restarts 1


# --- launch xpk ---------------------------------------------------------------------------------------------

def test_xpk_dry_run_v5p_64(capsys, sft_yaml):
    commands, notes = _dry_run(capsys, XPK + ["--config", str(sft_yaml), "--dry-run", "--docker-image", IMAGE,
                                              "--num-slices", "2", "--priority", "high", "--storage", "ckpt",
                                              "train.steps=10"])
    [workload] = commands
    assert workload[:3] == ["xpk", "workload", "create"]
    assert {"--cluster=rr-cluster", "--workload=sft-1", "--tpu-type=v5p-64", "--num-slices=2", "--project=my-proj",
            "--zone=us-east5-a", f"--docker-image={IMAGE}", "--max-restarts=10", "--priority=high",
            "--storage=ckpt"} <= set(workload)
    command = shlex.split(_command_of(workload))
    assert command == ["REASONRANK_DISTRIBUTED=1", "reasonrank-jax", "train", "sft", "--config", str(sft_yaml),
                       "train.steps=10"]
    cluster = next(shlex.split(note.split(": ", 1)[1]) for note in notes if "xpk cluster create" in note)
    assert cluster[:3] == ["xpk", "cluster", "create"]
    assert {"--cluster=rr-cluster", "--tpu-type=v5p-64", "--num-slices=2", "--on-demand", "--project=my-proj",
            "--zone=us-east5-a"} <= set(cluster)


def test_xpk_base_image_v5e_and_cluster_create(capsys, sft_yaml, tmp_path):
    argv = XPK + ["--config", str(sft_yaml), "--dry-run", "--base-docker-image", "python:3.11", "--create-cluster",
                  "--spot", "--max-restarts", "50"]
    argv[argv.index("v5p-64")] = "v5e-16"
    commands, _ = _dry_run(capsys, argv)
    cluster, workload = commands
    assert cluster[:3] == ["xpk", "cluster", "create"] and "--spot" in cluster
    assert "--tpu-type=v5litepod-16" in cluster and "--tpu-type=v5litepod-16" in workload
    assert {"--base-docker-image=python:3.11", f"--script-dir={tmp_path}", "--max-restarts=50"} <= set(workload)
    assert shlex.split(_command_of(workload))[4:6] == ["--config", "sft tiny.yaml"]  # relative to /app


def test_xpk_bad_input(capsys, sft_yaml, tmp_path, monkeypatch):
    good = XPK + ["--config", str(sft_yaml), "--dry-run"]
    _fails(capsys, good, "--docker-image", "--base-docker-image")  # neither
    _fails(capsys, good + ["--docker-image", IMAGE, "--base-docker-image", IMAGE], "give only one of")
    with_image = good + ["--docker-image", IMAGE]
    argv = list(with_image)
    argv[argv.index("v5p-64")] = "v5x-8"
    _fails(capsys, argv, "[--tpu]", "v5x-8")
    _fails(capsys, [a for a in with_image if a not in ("--zone", "us-east5-a")], "--zone")
    _fails(capsys, with_image + ["--priority", "urgent"], "--priority")
    _fails(capsys, [a if a != "sft-1" else "Sft_1" for a in with_image], "[--workload]")
    _fails(capsys, good + ["--base-docker-image", IMAGE, "--script-dir", str(tmp_path / "elsewhere")],
           "--script-dir")
    bad = tmp_path / "bad.yaml"
    bad.write_text(SFT_YAML.format(root=tmp_path).replace("micro_batch: 8", "micro_batch: 3"))
    _fails(capsys, [a if a != str(sft_yaml) else str(bad) for a in with_image], str(bad), "micro_batch")
    monkeypatch.setenv("PATH", str(tmp_path))
    _fails(capsys, [a for a in with_image if a != "--dry-run"], "xpk", "pip install xpk")


# --- TPU slice shapes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("v5p-64", TpuType("v5p", "v5p-64", chips=32, hosts=8, chips_per_host=4)),
    ("v5p-8", TpuType("v5p", "v5p-8", chips=4, hosts=1, chips_per_host=4)),
    ("v4-32", TpuType("v4", "v4-32", chips=16, hosts=4, chips_per_host=4)),
    ("v4-8", TpuType("v4", "v4-8", chips=4, hosts=1, chips_per_host=4)),
    ("v6e-256", TpuType("v6e", "v6e-256", chips=256, hosts=64, chips_per_host=4)),
    ("v6e-8", TpuType("v6e", "v6e-8", chips=8, hosts=1, chips_per_host=8)),
    ("v5e-8", TpuType("v5e", "v5litepod-8", chips=8, hosts=1, chips_per_host=8)),
    ("v5e-16", TpuType("v5e", "v5litepod-16", chips=16, hosts=4, chips_per_host=4)),
    ("v5litepod-16", TpuType("v5e", "v5litepod-16", chips=16, hosts=4, chips_per_host=4)),
    ("v5litepod-4", TpuType("v5e", "v5litepod-4", chips=4, hosts=1, chips_per_host=4)),
])
def test_parse_tpu(name, expected):
    assert parse_tpu(name) == expected


@pytest.mark.parametrize("name", ["v3-8", "v5p-6", "v5p-63", "v4-16384", "v5e-2", "v6e-512", "v5p", "", "v5p-64x"])
def test_parse_tpu_rejects(name):
    with pytest.raises(InputError):
        parse_tpu(name)
