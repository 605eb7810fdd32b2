"""Checkpoints of the SFT/GRPO trainers: orbax underneath, our own completeness check on top, a preemption flag.

On-disk layout (``<train.out>/checkpoints/``, one directory per step, orbax's default step names)::

    checkpoints/
      120/                          a complete checkpoint of step 120
        state/                      the state pytree (orbax StandardSave: OCDBT + zarr, sharding metadata)
        metadata/metadata           the JSON metadata dict (orbax JsonSave)
        reasonrank_manifest.json    ours: every file above with its size, written before orbax's atomic rename
        _CHECKPOINT_METADATA        orbax's step metadata (timestamps), rewritten by orbax after our manifest
        commit_success.txt          orbax's commit marker
      130.orbax-checkpoint-tmp/     a save in flight (or a killed one): never listed, never restored
      110.incomplete/               a finalized directory that failed our check, moved aside by the next save

Completeness. Orbax saves into ``<step>.orbax-checkpoint-tmp`` and renames it to ``<step>`` once every write has
landed (on a local filesystem; object stores use ``commit_success.txt`` instead), so a save killed midway leaves only
a tmp directory. That protects against dying *during* a save, not against a finalized directory that lost or
truncated files later (a full disk, a partial copy, a user's rsync): orbax lists such a step and may even restore it
without error (small arrays live in the OCDBT manifest). So, in orbax's post-finalization hook -- after every
host's writes and orbax's own finalization, just *before* the atomic rename -- we write ``reasonrank_manifest.json``
listing every file and its size. A step counts as complete iff its directory has orbax's final name, our manifest
parses and names this step, every listed file exists with its recorded size, and ``_CHECKPOINT_METADATA`` (which
orbax rewrites after our hook, so it is not sized) is valid JSON. Anything else is skipped with an
:class:`IncompleteCheckpointWarning` naming the directory and the reason, and listing falls back to the previous
complete step. Sizes catch truncation and deletion, not same-size corruption (that would mean reading every byte).

Nothing here deletes a file orbax did not write for us: orbax prunes our own checkpoints beyond ``keep`` and removes
its own stale tmp directory when the same step is saved again; a finalized-but-incomplete step directory is
*renamed* aside (``<step>.incomplete``) by the first save of a :class:`Checkpointer`, so orbax neither counts it
towards ``keep`` nor refuses to save that step again. Listing and restoring never change the directory.

Restoring onto another mesh: pass ``jax.ShapeDtypeStruct`` leaves whose ``sharding`` is on the current mesh (see
:func:`abstract_like`); orbax reads each shard's slice straight from storage, whatever mesh wrote it.

Local filesystems only (the manifest is written and checked with ``os``). Not multi-job-safe (orbax's own rule): one
trainer per directory.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import warnings
from typing import Any, Iterable

import jax
import numpy as np

MANIFEST_NAME = "reasonrank_manifest.json"
MANIFEST_FORMAT = "reasonrank-jax checkpoint manifest v1"
STATE_ITEM = "state"
METADATA_ITEM = "metadata"
INCOMPLETE_SUFFIX = ".incomplete"
_TMP_MARK = ".orbax-checkpoint-tmp"  # orbax: <step>.orbax-checkpoint-tmp[-<timestamp>]
_STEP_RE = re.compile(r"(0|[1-9][0-9]*)")
_TMP_RE = re.compile(r"(0|[1-9][0-9]*)" + re.escape(_TMP_MARK) + r".*")
# Written by orbax after the post-finalization hook (timestamps, commit marker), so not in the manifest.
_ORBAX_STEP_METADATA = "_CHECKPOINT_METADATA"
_UNSIZED = frozenset({_ORBAX_STEP_METADATA, "commit_success.txt", MANIFEST_NAME})


class IncompleteCheckpointWarning(UserWarning):
    """A checkpoint directory that is not a complete checkpoint (skipped, never restored)."""


class IncompleteCheckpointError(ValueError):
    """An explicit restore of a step whose checkpoint is not complete."""


# ---------------------------------------------------------------------------------------------------------------------
# Pure helpers


def abstract_like(tree, shardings=None):
    """The restore target for `tree`: array leaves become `jax.ShapeDtypeStruct`s carrying a sharding.

    `tree` may hold jax arrays, numpy arrays/scalars, ShapeDtypeStructs (e.g. from `jax.eval_shape`) and python
    scalars (kept as they are: orbax restores them as python scalars). `shardings` is None (a jax array keeps its
    own sharding, anything else gets none), one `jax.sharding.Sharding` for every array leaf, or
    a pytree of shardings matching `tree` (e.g. `sharding.params_shardings(mesh, shapes)`; None where no sharding).
    """
    def one(leaf, sharding):
        if isinstance(leaf, (bool, int, float, complex, str)) or leaf is None:
            return leaf
        if isinstance(leaf, jax.Array) and sharding is None:
            sharding = leaf.sharding
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            raise TypeError(f"cannot make an abstract leaf from {type(leaf).__name__}")
        return jax.ShapeDtypeStruct(tuple(leaf.shape), leaf.dtype, sharding=sharding)

    if shardings is None or isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda leaf: one(leaf, shardings), tree)
    return jax.tree.map(one, tree, shardings)


def _restore_target(abstract_state):
    """What orbax's StandardRestore accepts: numpy scalars and concrete arrays become ShapeDtypeStructs."""
    def one(leaf):
        if isinstance(leaf, (np.ndarray, np.generic)):
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)
        if isinstance(leaf, jax.Array):
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
        return leaf

    return jax.tree.map(one, abstract_state)


def _walk_files(root: str) -> dict[str, int]:
    """{relative path with '/' separators: size} of every file under `root`."""
    files = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            files[os.path.relpath(path, root).replace(os.sep, "/")] = os.path.getsize(path)
    return files


def build_manifest(step_dir: str, step: int) -> dict:
    """The manifest of `step_dir` as it is now (orbax's post-finalization state)."""
    files = {rel: size for rel, size in sorted(_walk_files(step_dir).items()) if rel not in _UNSIZED}
    return {"format": MANIFEST_FORMAT, "step": step, "files": files}


def write_manifest(step_dir: str, step: int) -> None:
    data = json.dumps(build_manifest(step_dir, step), indent=1, sort_keys=True).encode()
    with open(os.path.join(step_dir, MANIFEST_NAME), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def check_step_dir(step_dir: str, step: int) -> str | None:
    """None when `step_dir` is a complete checkpoint of `step`, else the reason it is not (one line)."""
    manifest_path = os.path.join(step_dir, MANIFEST_NAME)
    try:
        with open(manifest_path, "rb") as f:
            manifest = json.loads(f.read())
    except FileNotFoundError:
        return f"no {MANIFEST_NAME} (not written by a finished save)"
    except (OSError, ValueError) as err:
        return f"unreadable {MANIFEST_NAME}: {err}"
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT \
            or not isinstance(manifest.get("files"), dict):
        return f"{MANIFEST_NAME} is not a {MANIFEST_FORMAT!r}"
    if manifest.get("step") != step:
        return f"{MANIFEST_NAME} is for step {manifest.get('step')}, not {step}"
    for rel, size in manifest["files"].items():
        try:
            actual = os.path.getsize(os.path.join(step_dir, rel))
        except OSError:
            return f"missing file {rel}"
        if actual != size:
            return f"file {rel} has {actual} bytes, expected {size} (truncated or rewritten)"
    try:
        with open(os.path.join(step_dir, _ORBAX_STEP_METADATA), "rb") as f:
            json.loads(f.read())
    except FileNotFoundError:
        return f"missing file {_ORBAX_STEP_METADATA}"
    except (OSError, ValueError):
        return f"file {_ORBAX_STEP_METADATA} is not valid JSON (truncated)"
    return None


def scan(directory: str, ignore_tmp_steps: Iterable[int] = ()) -> tuple[list[int], list[tuple[str, int, str]]]:
    """(complete steps ascending, [(path, step, reason)] of incomplete step directories) under `directory`.

    Orbax tmp directories count as incomplete unless their step is in `ignore_tmp_steps` (a save in flight).
    Directories this module moved aside, and anything not named like a step, are not looked at.
    """
    complete, incomplete = [], []
    ignore_tmp_steps = set(ignore_tmp_steps)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return [], []
    for name in names:
        path = os.path.join(directory, name)
        if _STEP_RE.fullmatch(name):
            step = int(name)
            if not os.path.isdir(path):
                continue
            reason = check_step_dir(path, step)
            if reason is None:
                complete.append(step)
            elif os.path.isdir(path):  # not pruned by orbax while we looked
                incomplete.append((path, step, reason))
        elif (m := _TMP_RE.fullmatch(name)) and os.path.isdir(path):
            step = int(m.group(1))
            if step not in ignore_tmp_steps:
                incomplete.append((path, step, "an unfinished orbax save (temporary directory)"))
    complete.sort()
    incomplete.sort(key=lambda item: (item[1], item[0]))
    return complete, incomplete


def _aside_name(path: str) -> str:
    candidate, n = path + INCOMPLETE_SUFFIX, 1
    while os.path.exists(candidate):
        n += 1
        candidate = f"{path}{INCOMPLETE_SUFFIX}-{n}"
    return candidate


# ---------------------------------------------------------------------------------------------------------------------
# Checkpointer


def _multi_process() -> bool:
    import jax

    return jax.process_count() > 1


class Checkpointer:
    """Checkpoints of one run under `directory` (one subdirectory per step), orbax underneath.

    save(step, state, metadata): `state` is a pytree container (dict, dataclass, ...; not a bare array) of jax arrays
    (sharded or not), numpy arrays/scalars and python scalars; `metadata` a JSON-able dict stored beside it. With
    `async_save` the call returns once the arrays are copied off the devices; the write finishes in the background,
    and the next `save`, `wait()` or `close()` waits for it. `keep` (None = all) complete checkpoints are kept;
    orbax prunes older ones. With `save_every`, `save` writes only steps that are a multiple of it unless
    `force=True` (the last step, a preemption); without it every call saves.
    """

    def __init__(self, directory: str, keep: int | None = 3, async_save: bool = True,
                 save_every: int | None = None):
        import orbax.checkpoint as ocp

        if keep is not None and keep < 1:
            raise ValueError(f"keep must be at least 1 (or None for all), got {keep}")
        if save_every is not None and save_every < 1:
            raise ValueError(f"save_every must be at least 1 (or None), got {save_every}")
        self._ocp = ocp
        self.directory = os.path.abspath(os.fspath(directory))
        self.keep = keep
        self.async_save = async_save
        self.save_every = save_every
        self._inflight: int | None = None  # step whose orbax save may still be running
        self._tidied = False  # incomplete step directories moved aside (first save)
        self._warned: set[tuple[str, str]] = set()
        self._closed = False
        os.makedirs(self.directory, exist_ok=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            # Always orbax's async checkpointer: its post-finalization hook is where the manifest is written
            # (the sync one has no hook). async_save=False just waits after each save.
            enable_async_checkpointing=True,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._write_inflight_manifest),
            cleanup_tmp_directories=False,  # a reader must not delete a running trainer's in-flight save
            lightweight_initialize=True,  # steps come from our scan; don't read every step's metadata
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    # -- orbax hook (background thread, primary host, all hosts' writes done, before the atomic rename) --------------

    def _write_inflight_manifest(self) -> None:
        step = self._inflight
        if step is None:
            raise RuntimeError("checkpoint manifest hook called with no save in flight")
        prefix = f"{step}{_TMP_MARK}"
        candidates = [os.path.join(self.directory, n) for n in os.listdir(self.directory) if n.startswith(prefix)]
        candidates = [p for p in candidates if os.path.isdir(p)]
        if not candidates:  # commit-file atomicity (object stores): orbax writes in place
            final = os.path.join(self.directory, str(step))
            if not os.path.isdir(final):
                raise FileNotFoundError(f"no directory being written for step {step} in {self.directory}")
            candidates = [final]
        write_manifest(max(candidates, key=os.path.getmtime), step)

    # -- listing ----------------------------------------------------------------------------------------------------

    def _scan(self) -> list[int]:
        complete, incomplete = scan(self.directory, ignore_tmp_steps=[] if self._inflight is None
                                    else [self._inflight])
        for path, _, reason in incomplete:
            if (path, reason) not in self._warned:
                self._warned.add((path, reason))
                warnings.warn(f"skipping incomplete checkpoint {path}: {reason}", IncompleteCheckpointWarning,
                              stacklevel=3)
        return complete

    def steps(self) -> list[int]:
        """Steps with a complete checkpoint, ascending (a save still in flight is not one yet)."""
        return self._scan()

    def latest_step(self) -> int | None:
        """The newest complete step, or None; incomplete newer directories are skipped with a warning."""
        complete = self._scan()
        return complete[-1] if complete else None

    latest_complete_step = latest_step

    # -- saving -----------------------------------------------------------------------------------------------------

    def _tidy(self) -> None:
        """Move finalized-but-incomplete step directories aside, once: orbax must not keep or collide with them."""
        if self._tidied:
            return
        from reasonrank_jax import distributed

        _, incomplete = scan(self.directory, ignore_tmp_steps=[])
        if not distributed.is_primary():  # process 0 moves them; the others wait below, then reload
            incomplete = []
        moved = False
        for path, _, reason in incomplete:
            if _STEP_RE.fullmatch(os.path.basename(path)):
                aside = _aside_name(path)
                os.rename(path, aside)
                warnings.warn(f"moved incomplete checkpoint {path} to {aside}: {reason}", IncompleteCheckpointWarning,
                              stacklevel=3)
                moved = True
        distributed.barrier("checkpoints tidied")
        if moved or _multi_process():
            self._manager.reload()
        self._tidied = True

    def save(self, step: int, state, metadata: dict, force: bool = False) -> bool:
        """Save `state` and `metadata` as `step`; True when a save was started.

        False when `save_every` says no (and not `force`) or `step` already has a complete checkpoint (e.g. the
        periodic save and the final or preemption one fell on the same step). A step older than the latest complete
        one is refused (orbax prunes in save order, so the stale newer step would outlive the new ones and be the
        one a rerun resumes from): continue from the latest, or use a fresh directory.
        """
        if self._closed:
            raise RuntimeError("save on a closed Checkpointer")
        step = int(step)
        if not force and self.save_every is not None and step % self.save_every != 0:
            return False
        try:  # checked here, not in orbax's background thread, so a bad value fails at the caller
            metadata = json.loads(json.dumps(metadata, allow_nan=False))
        except (TypeError, ValueError) as err:
            raise TypeError(f"checkpoint metadata must be a JSON-able dict: {err}") from None
        if not isinstance(metadata, dict):
            raise TypeError(f"checkpoint metadata must be a dict, got {type(metadata).__name__}")
        self.wait()  # before _inflight changes: the previous save's hook reads it
        self._tidy()
        complete = self._scan()
        if step in complete:
            return False
        if complete and step < complete[-1]:
            raise ValueError(f"refusing to save step {step} in {self.directory}: it already holds a newer complete "
                             f"checkpoint (step {complete[-1]}); resume from it or use a fresh directory")
        ocp = self._ocp
        self._inflight = step
        try:
            self._manager.save(step, args=ocp.args.Composite(
                **{STATE_ITEM: ocp.args.StandardSave(state), METADATA_ITEM: ocp.args.JsonSave(metadata)}), force=True)
        except BaseException:
            self._inflight = None
            raise
        if not self.async_save:
            self.wait()
        return True

    def wait(self) -> None:
        """Block until the save in flight (if any) is complete on disk; its errors are raised here."""
        if self._inflight is not None:
            try:
                self._manager.wait_until_finished()
                self._manager.check_for_errors()
            finally:
                self._inflight = None
            if _multi_process():  # process 0 finalizes (manifest, rename): no process scans before it is done
                from reasonrank_jax import distributed

                distributed.barrier("checkpoint finalized")

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.wait()
        finally:
            self._closed = True
            self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- restoring --------------------------------------------------------------------------------------------------

    def _require_complete(self, step: int) -> None:
        if step == self._inflight:
            self.wait()
        path = os.path.join(self.directory, str(step))
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no checkpoint of step {step} in {self.directory}")
        reason = check_step_dir(path, step)
        if reason is not None:
            raise IncompleteCheckpointError(f"checkpoint {path} is incomplete: {reason}")

    def restore(self, step: int, abstract_state):
        """The state saved at `step`, placed as `abstract_state` says.

        `abstract_state`: the saved pytree's structure with `jax.ShapeDtypeStruct` leaves whose `sharding` is on the
        current mesh (any mesh shape: this is how a checkpoint moves between meshes; see `abstract_like`); python
        scalar leaves restore as python scalars, numpy leaves as numpy arrays. A ShapeDtypeStruct without a sharding
        gets the one recorded at save time (orbax's fallback: only works on the same devices).
        """
        step = int(step)
        self._require_complete(step)
        ocp = self._ocp
        restored = self._manager.restore(step, args=ocp.args.Composite(
            **{STATE_ITEM: ocp.args.StandardRestore(_restore_target(abstract_state))}))
        return restored[STATE_ITEM]

    def restore_metadata(self, step: int) -> dict:
        step = int(step)
        self._require_complete(step)
        ocp = self._ocp
        restored = self._manager.restore(step, args=ocp.args.Composite(**{METADATA_ITEM: ocp.args.JsonRestore()}))
        return restored[METADATA_ITEM]


# ---------------------------------------------------------------------------------------------------------------------
# Preemption


class PreemptionGuard:
    """Turns SIGTERM (and SIGINT) into a flag the training loop checks after every step.

        with PreemptionGuard() as guard:
            for step in ...:
                train_step(...)
                ckpt.save(step, state, meta)           # periodic (save_every)
                if guard.requested:
                    ckpt.save(step, state, meta, force=True); ckpt.wait(); break

    A repeated SIGTERM is ignored (schedulers may signal more than once; the save must not be cut short; SIGKILL
    follows a grace period anyway). A second SIGINT (Ctrl-C twice) goes to the previous handler, i.e.
    KeyboardInterrupt by default. The previous handlers are restored on exit. Main thread only (Python's rule).
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = tuple(signals)
        self._previous: dict[int, Any] = {}
        self._requested = False
        self.signal: int | None = None  # the first signal received

    @property
    def requested(self) -> bool:
        return self._requested

    def request(self, signum: int | None = None) -> None:
        """Set the flag by hand (tests, a time budget)."""
        self._requested = True
        if self.signal is None:
            self.signal = signum

    def _handle(self, signum, frame) -> None:
        if self._requested and signum == signal.SIGINT:
            previous = self._previous.get(signum)
            if callable(previous):
                previous(signum, frame)
                return
            if previous in (signal.SIG_DFL, None):
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        self.request(signum)

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionGuard must be entered in the main thread (signal handlers live there)")
        try:
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        except BaseException:
            self._restore()
            raise
        return self

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()
