"""Checkpointer (orbax + our manifest check) and PreemptionGuard, on tiny pytrees over 8 virtual CPU devices."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P, SingleDeviceSharding

from reasonrank_jax.sharding import make_mesh
from reasonrank_jax.training.checkpoint import (MANIFEST_NAME, Checkpointer, IncompleteCheckpointError,
                                                IncompleteCheckpointWarning, PreemptionGuard, abstract_like)

META = {"lora": {"rank": 8, "alpha": 16, "targets": ["q_proj", "v_proj"]}, "epoch": 1, "model_path": "/m"}


def small_state(step=7, mesh=None):
    w = jnp.arange(64, dtype=jnp.float32).reshape(8, 8) / 7 + step
    if mesh is not None:
        w = jax.device_put(w, NamedSharding(mesh, P("fsdp", None)))
    return {"params": {"w": w, "b": (jnp.arange(8, dtype=jnp.float32) / 3 + step).astype(jnp.bfloat16)},
            "count": jnp.arange(4, dtype=jnp.int32) * step, "step": step}


def assert_bitwise(restored, expected):
    assert jax.tree.structure(restored) == jax.tree.structure(expected)
    for r, e in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
        if isinstance(e, int):
            assert r == e and isinstance(r, int)
            continue
        assert r.dtype == e.dtype and r.shape == e.shape
        assert np.asarray(r).tobytes() == np.asarray(e).tobytes()


def files_under(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


def biggest_data_file(step_dir):
    """The largest array data file of the state item (what a truncated copy would cut)."""
    paths = [os.path.join(step_dir, rel) for rel in files_under(step_dir) if rel.startswith("state/")]
    return max(paths, key=os.path.getsize)


def test_round_trip_bitwise_and_metadata(tmp_path):
    state = small_state(mesh=make_mesh((1, 8, 1)))
    with Checkpointer(str(tmp_path / "ckpt"), async_save=False) as ckpt:
        assert ckpt.steps() == [] and ckpt.latest_step() is None
        assert ckpt.save(7, state, META) is True
        assert ckpt.steps() == [7]
        restored = ckpt.restore(7, abstract_like(state))
        assert_bitwise(restored, state)
        assert restored["params"]["w"].sharding == state["params"]["w"].sharding
        assert ckpt.restore_metadata(7) == META
        # The same step again (periodic and final save on one step): nothing written, no error.
        assert ckpt.save(7, state, META, force=True) is False
    manifest = json.loads((tmp_path / "ckpt" / "7" / MANIFEST_NAME).read_text())
    assert manifest["step"] == 7 and any(rel.startswith("state/") for rel in manifest["files"])
    assert any(rel.startswith("metadata/") for rel in manifest["files"])


def test_numpy_and_python_scalars(tmp_path):
    state = {"lr": np.float32(0.25), "rng": np.arange(2, dtype=np.uint32), "step": 3, "loss": 1.5}
    with Checkpointer(str(tmp_path), async_save=False) as ckpt:
        ckpt.save(3, state, {})
        restored = ckpt.restore(3, state)  # concrete leaves are accepted as their own abstract shape
    assert restored["step"] == 3 and restored["loss"] == 1.5
    assert np.asarray(restored["lr"]).dtype == np.float32 and float(restored["lr"]) == 0.25
    np.testing.assert_array_equal(restored["rng"], state["rng"])


def test_metadata_must_be_json(tmp_path):
    with Checkpointer(str(tmp_path)) as ckpt:
        with pytest.raises(TypeError, match="JSON"):
            ckpt.save(1, {"a": jnp.ones(2)}, {"bad": object()})
        assert ckpt.steps() == []


def test_keep_two_keeps_the_last_two(tmp_path):
    with Checkpointer(str(tmp_path), keep=2) as ckpt:
        for step in range(1, 5):
            ckpt.save(step, small_state(step), {"step": step})
        ckpt.wait()
        assert ckpt.steps() == [3, 4]
    assert sorted(os.listdir(tmp_path)) == ["3", "4"]


def test_async_save_returns_then_wait_completes(tmp_path):
    state = {"big": jnp.ones((256, 256), jnp.float32), "step": 1}
    ckpt = Checkpointer(str(tmp_path), keep=3, async_save=True)
    ckpt.save(1, state, META)
    in_flight = ckpt.steps()  # still being written, or already done: never listed half-written
    assert in_flight in ([], [1])
    ckpt.wait()
    assert ckpt.steps() == [1]
    assert_bitwise(ckpt.restore(1, abstract_like(state)), state)
    # A save of the next step waits for the previous one itself.
    ckpt.save(2, {**state, "step": 2}, META)
    ckpt.close()
    assert Checkpointer(str(tmp_path)).steps() == [1, 2]


def test_save_every_and_force(tmp_path):
    with Checkpointer(str(tmp_path), save_every=3, async_save=False) as ckpt:
        saved = [step for step in range(1, 8) if ckpt.save(step, {"x": jnp.full(2, step)}, {})]
        assert saved == [3, 6]
        assert ckpt.save(7, {"x": jnp.full(2, 7)}, {}, force=True)
        assert ckpt.steps() == [3, 6, 7]
        with pytest.raises(ValueError, match="newer complete checkpoint"):
            ckpt.save(5, {"x": jnp.full(2, 5)}, {}, force=True)


def test_restore_onto_other_meshes(tmp_path):
    saved_mesh = make_mesh((1, 8, 1))
    state = small_state(5, mesh=saved_mesh)
    with Checkpointer(str(tmp_path), async_save=False) as ckpt:
        ckpt.save(5, state, META)

    mesh = make_mesh((2, 2, 2))
    shardings = {"params": {"w": NamedSharding(mesh, P("data", "tensor")), "b": NamedSharding(mesh, P("fsdp"))},
                 "count": NamedSharding(mesh, P()), "step": None}
    with Checkpointer(str(tmp_path)) as ckpt:
        restored = ckpt.restore(5, abstract_like(state, shardings))
        assert_bitwise(restored, state)
        for leaf, sharding in zip(jax.tree.leaves(restored), jax.tree.leaves(shardings)):
            assert leaf.sharding == sharding

        one = SingleDeviceSharding(jax.devices()[3])
        restored = ckpt.restore(5, abstract_like(state, one))
        assert_bitwise(restored, state)
        assert all(leaf.sharding == one for leaf in jax.tree.leaves(restored) if isinstance(leaf, jax.Array))

        single_mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
        single = {"params": {"w": NamedSharding(single_mesh, P("fsdp", "tensor")),
                             "b": NamedSharding(single_mesh, P("fsdp"))},
                  "count": NamedSharding(single_mesh, P()), "step": None}
        restored = ckpt.restore(5, abstract_like(state, single))
        assert_bitwise(restored, state)
        for leaf, sharding in zip(jax.tree.leaves(restored), jax.tree.leaves(single)):
            assert leaf.sharding == sharding


@pytest.mark.parametrize("damage", ["truncate", "delete", "no_manifest", "step_metadata"])
def test_damaged_latest_is_skipped_with_warning(tmp_path, damage):
    with Checkpointer(str(tmp_path), keep=3, async_save=False) as ckpt:
        for step in (10, 20, 30):
            ckpt.save(step, small_state(step), {"step": step})
    step_dir = tmp_path / "30"
    target = biggest_data_file(str(step_dir))
    if damage == "truncate":
        with open(target, "r+b") as f:
            f.truncate(os.path.getsize(target) // 2)
    elif damage == "delete":
        os.remove(target)
    elif damage == "no_manifest":  # finalized by orbax, but not by a save of ours (or the hook never ran)
        os.remove(step_dir / MANIFEST_NAME)
    else:
        (step_dir / "_CHECKPOINT_METADATA").write_text('{"item_hand')

    ckpt = Checkpointer(str(tmp_path), keep=3)
    with pytest.warns(IncompleteCheckpointWarning, match=str(step_dir)):
        assert ckpt.latest_step() == 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per directory and reason, not one per call
        assert ckpt.steps() == [10, 20]
    with pytest.raises(IncompleteCheckpointError, match=str(step_dir)):
        ckpt.restore(30, abstract_like(small_state(30)))
    assert_bitwise(ckpt.restore(20, abstract_like(small_state(20))), small_state(20))

    # Resuming from 20 and saving 30 again: the damaged directory is moved aside (not deleted), then replaced.
    with pytest.warns(IncompleteCheckpointWarning, match="moved incomplete checkpoint"):
        ckpt.save(30, small_state(30), {"step": 30})
    ckpt.close()
    assert (tmp_path / "30.incomplete").is_dir()
    ckpt = Checkpointer(str(tmp_path), keep=3)
    assert ckpt.steps() == [10, 20, 30]
    assert_bitwise(ckpt.restore(30, abstract_like(small_state(30))), small_state(30))


def test_leftover_orbax_tmp_directory_is_ignored(tmp_path):
    with Checkpointer(str(tmp_path), async_save=False) as ckpt:
        ckpt.save(1, small_state(1), {})
    leftover = tmp_path / "2.orbax-checkpoint-tmp"
    (leftover / "state").mkdir(parents=True)
    (leftover / "state" / "_METADATA").write_text("{")
    ckpt = Checkpointer(str(tmp_path))
    with pytest.warns(IncompleteCheckpointWarning, match=str(leftover)):
        assert ckpt.steps() == [1]
    assert ckpt.latest_step() == 1
    # Saving that step again: orbax replaces its own unfinished directory.
    ckpt.save(2, small_state(2), {})
    ckpt.close()
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]


def test_preemption_guard_sets_flag_and_restores_handler():
    calls = []
    sigint_before = signal.getsignal(signal.SIGINT)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        with PreemptionGuard() as guard:
            assert not guard.requested
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):  # the handler runs between bytecodes of the main thread
                if guard.requested:
                    break
                time.sleep(0.001)
            assert guard.requested and guard.signal == signal.SIGTERM
            os.kill(os.getpid(), signal.SIGTERM)  # a repeated SIGTERM is absorbed
            time.sleep(0.01)
            assert calls == []
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert calls == [signal.SIGTERM]  # the previous handler is back
        assert signal.getsignal(signal.SIGINT) is sigint_before
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_preemption_guard_second_sigint_interrupts():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with PreemptionGuard() as guard:
                os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C: save and stop after this step
                time.sleep(0.01)
                assert guard.requested and guard.signal == signal.SIGINT
                os.kill(os.getpid(), signal.SIGINT)  # the second: interrupt now
                time.sleep(0.5)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


TRAIN_SCRIPT = """
import sys, time
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from reasonrank_jax.sharding import make_mesh
from reasonrank_jax.training.checkpoint import Checkpointer, PreemptionGuard

mesh = make_mesh((1, 8, 1))
ckpt = Checkpointer(sys.argv[1], keep=2, save_every=3)
state = {"w": jax.device_put(jnp.zeros((8, 4), jnp.float32), NamedSharding(mesh, P("fsdp"))), "step": 0}
with PreemptionGuard() as guard:
    for step in range(1, 100000):
        state = {"w": state["w"] + 1, "step": step}  # one training step
        time.sleep(0.05)
        ckpt.save(step, state, {"step": step})
        print(f"step {step}", flush=True)
        if guard.requested:
            ckpt.save(step, state, {"step": step, "preempted": True}, force=True)
            ckpt.wait()
            print(f"preempted at {step}", flush=True)
            break
ckpt.close()
"""


def test_sigterm_leaves_a_complete_checkpoint(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(TRAIN_SCRIPT))
    out = tmp_path / "checkpoints"
    proc = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        for line in proc.stdout:
            if line.startswith("step ") and int(line.split()[1]) >= 4:
                break
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    last = [line for line in stdout.splitlines() if line.startswith("preempted at ")]
    assert last, stdout + stderr[-3000:]
    step = int(last[0].split()[-1])

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing half-written left behind
        ckpt = Checkpointer(str(out))
        assert ckpt.latest_step() == step
        assert len(ckpt.steps()) <= 2
    mesh = make_mesh((2, 2, 2))
    abstract = {"w": jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=NamedSharding(mesh, P("data", "tensor"))),
                "step": 0}
    restored = ckpt.restore(step, abstract)
    assert restored["step"] == step
    np.testing.assert_array_equal(np.asarray(restored["w"]), np.full((8, 4), step, np.float32))
    meta = ckpt.restore_metadata(step)
    assert meta["step"] == step and (meta.get("preempted") or step % 3 == 0)
    ckpt.close()
