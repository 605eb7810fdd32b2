"""Outputs that are never destroyed: a command replaces only what it wrote itself.

Two kinds of output place:

- :class:`OutputDir` (``rerank --out``, ``smoke --out``): a directory that is new, empty, or was written by the same
  command, which left its resolved config there as ``config.yaml`` (a header line names the command). Anything else
  is refused, unless ``--overwrite`` says that replacing is the user's intent.
- :class:`OutputFiles` (``data filter --out/--report/...``): single files written atomically (a temporary file in
  the same directory, fsync'd, then renamed over the target). Beside the first one, ``<file>.config.yaml`` records
  the resolved config and, in comments, the sha256 of every file written, so a rerun may replace exactly those files, unchanged
  since, and nothing else. An append-only log (``data synth --out``) is validated by its reader instead.

Outputs are checked before any work starts (so a refusal costs nothing), and the resolved config is recorded only
once the job has really started (so a command that failed to start leaves nothing that blocks the corrected one).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from typing import Callable, Iterator

from reasonrank_jax.config import to_yaml, written_by
from reasonrank_jax.errors import InputError

CONFIG_NAME = "config.yaml"
_OVERWRITE_HINT = "pass --overwrite to replace it"
_SHA_PREFIX = "# wrote sha256:"


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary path beside ``path``; renamed over it when the block succeeds, removed when it fails."""
    directory, name = os.path.split(os.path.abspath(path))
    # Not mkstemp: its files are private (0600), while an output gets the umask's permissions like any other.
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    open(tmp, "xb").close()
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write(path: str, data: str | bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_directory(path: str, what: str = "--out") -> None:
    """Create ``path`` (and parents) as a directory, or fail as bad input (a file in the way, no permission)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError("exists and is not a directory", path=path, field=what)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create directory: {err.strerror}", path=path, field=what) from None
    if not os.access(path, os.W_OK):
        raise InputError("directory is not writable", path=path, field=what)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def refuse_inputs(outputs: dict[str, str], inputs: dict[str, str | None]) -> None:
    """An output path that is also an input, or two outputs at one path, would destroy data: bad input."""
    seen: dict[str, str] = {}
    for out_field, out in outputs.items():
        for in_field, source in inputs.items():
            if source and os.path.exists(source) and os.path.exists(out) and _same_file(source, out):
                raise InputError(f"is also the input {in_field}", path=out, field=out_field)
        key = os.path.abspath(out)
        if key in seen:
            raise InputError(f"is also {seen[key]}", path=out, field=out_field)
        seen[key] = out_field


class OutputDir:
    """A directory owned by one command (see the module docstring)."""

    def __init__(self, path: str, command: str, overwrite: bool = False, field: str = "--out",
                 legacy_markers: tuple[str, ...] = (), can_overwrite: bool = True):
        """can_overwrite: whether the command has --overwrite (a training run directory does not: it resumes)."""
        self.path, self.command, self.field = path, command, field
        if os.path.exists(path) and not os.path.isdir(path):
            raise InputError("exists and is not a directory; give a directory path", path=path, field=field)
        if os.path.isdir(path) and os.listdir(path) and not overwrite:
            owner = self._owner(legacy_markers)
            if owner != command:
                held = f"output of 'reasonrank-jax {owner}'" if owner else "files this command did not write"
                hint = f" or {_OVERWRITE_HINT}" if can_overwrite else ""
                raise InputError(f"holds {held}; use another directory{hint}", path=path, field=field)

    def _owner(self, legacy_markers: tuple[str, ...]) -> str | None:
        config = os.path.join(self.path, CONFIG_NAME)
        if os.path.isfile(config):
            with open(config, encoding="utf-8", errors="replace") as f:
                return written_by(f.read(4096))
        if any(os.path.isfile(os.path.join(self.path, m)) for m in legacy_markers):
            return self.command
        return None

    def create(self) -> None:
        ensure_directory(self.path, self.field)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def record_config(self, config) -> None:
        """Save the resolved config: call once the job has really started."""
        self.create()
        atomic_write(self.file(CONFIG_NAME), to_yaml(config, self.command))


class OutputFiles:
    """Single-file outputs of one command, replaced only where the sidecar proves this command wrote them."""

    def __init__(self, command: str, paths: dict[str, str | None], overwrite: bool = False,
                 inputs: dict[str, str | None] | None = None):
        """``paths``: option name -> path (None: not asked for); the first given one carries the sidecar."""
        self.command, self.overwrite = command, overwrite
        self.paths = {field: p for field, p in paths.items() if p}
        refuse_inputs(self.paths, inputs or {})
        first_field, first = next(iter(self.paths.items()))
        self.sidecar = first + "." + CONFIG_NAME
        self.recorded = self._read_sidecar(first_field)
        self.written: dict[str, str] = {}
        for field, path in self.paths.items():
            self._claim(field, path)

    def _read_sidecar(self, field: str) -> dict[str, str]:
        """The sha256 of each file a previous run recorded, if the sidecar is this command's."""
        if not os.path.exists(self.sidecar):
            return {}
        with open(self.sidecar, encoding="utf-8", errors="replace") as f:
            text = f.read()
        if written_by(text) != self.command:
            if self.overwrite:
                return {}
            raise InputError(f"exists and was not written by 'reasonrank-jax {self.command}'; {_OVERWRITE_HINT}",
                             path=self.sidecar, field=field)
        files = {}
        for line in text.splitlines():
            if line.startswith(_SHA_PREFIX):
                digest, _, path = line[len(_SHA_PREFIX):].partition(" ")
                files[path] = digest
        return files

    def _claim(self, field: str, path: str) -> None:
        if os.path.isdir(path):
            raise InputError("is a directory; expected a file path", path=path, field=field)
        parent = os.path.dirname(os.path.abspath(path))
        ensure_directory(parent, field)
        if not os.path.exists(path) or self.overwrite:
            return
        recorded = self.recorded.get(os.path.abspath(path))
        if recorded is None or recorded != sha256_of(path):
            why = "was changed since this command wrote it" if recorded else "was not written by this command"
            raise InputError(f"exists and {why}; {_OVERWRITE_HINT}", path=path, field=field)

    def write(self, field: str, writer: Callable[[str], None]) -> str:
        """Atomically write the output of option ``field``: ``writer(tmp_path)`` writes the content."""
        path = self.paths[field]
        with atomic_path(path) as tmp:
            writer(tmp)
        self.written[os.path.abspath(path)] = sha256_of(path)
        return path

    def write_text(self, field: str, text: str) -> str:
        return self.write(field, lambda tmp: atomic_write_plain(tmp, text))

    def record_config(self, config) -> None:
        """The resolved config and the checksums of the files written, beside the first output."""
        files = {**self.recorded, **self.written}
        # Comments, so that the sidecar still loads with --config.
        checksums = "".join(f"{_SHA_PREFIX}{digest} {path}\n" for path, digest in sorted(files.items()))
        atomic_write(self.sidecar, to_yaml(config, self.command) + checksums)


def atomic_write_plain(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


class OutputLog:
    """An append-only, resumable log (``data synth --out``). Its reader validates an existing log (a file that
    is not this command's log is refused untouched); its resolved config goes to ``<log>.config.yaml``."""

    def __init__(self, command: str, path: str, field: str, inputs: dict[str, str | None] | None = None):
        self.command, self.path = command, path
        refuse_inputs({field: path}, inputs or {})
        if os.path.isdir(path):
            raise InputError("is a directory; expected a file path", path=path, field=field)
        ensure_directory(os.path.dirname(os.path.abspath(path)), field)
        self.sidecar = path + "." + CONFIG_NAME
        if os.path.exists(self.sidecar):
            with open(self.sidecar, encoding="utf-8", errors="replace") as f:
                if written_by(f.read(4096)) != command:
                    raise InputError(f"exists and was not written by 'reasonrank-jax {command}'", path=self.sidecar,
                                     field=field)

    def record_config(self, config) -> None:
        atomic_write(self.sidecar, to_yaml(config, self.command))
