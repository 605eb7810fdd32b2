"""A small, strict safetensors reader and writer.

Why our own: numpy has no bfloat16, so the `safetensors` numpy backend cannot hand us bf16 checkpoints. Reading the
format directly lets us memory-map each tensor (ml_dtypes.bfloat16 included) and copy it once, tensor by tensor,
and lets every corruption surface as one `InputError` naming the file.

Format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]},
"__metadata__": {...}}, then the raw little-endian data; offsets are relative to the end of the header.
"""

from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np

from reasonrank_jax.errors import InputError

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}


class SafetensorsFile:
    """Lazily reads tensors from one .safetensors file (memory-mapped; nothing is loaded until asked for)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise InputError("safetensors file not found", path=self.path)
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise InputError("corrupt safetensors file: shorter than its 8-byte header length", path=self.path)
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > size - 8:
                raise InputError(f"corrupt safetensors file: header length {header_len} exceeds file size {size}",
                                 path=self.path)
            try:
                header = json.loads(f.read(header_len))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise InputError(f"corrupt safetensors header: {err}", path=self.path) from None
        if not isinstance(header, dict):
            raise InputError("corrupt safetensors header: not a JSON object", path=self.path)
        self.metadata = header.pop("__metadata__", None) or {}
        self._data_start = 8 + header_len
        self._entries = {}
        for name, entry in header.items():
            try:
                dtype = DTYPES[entry["dtype"]]
                shape = tuple(int(n) for n in entry["shape"])
                begin, end = (int(o) for o in entry["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise InputError(f"corrupt safetensors header entry for tensor {name!r}: {entry!r}",
                                 path=self.path) from None
            expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if end - begin != expected or begin < 0 or self._data_start + end > size:
                raise InputError(f"corrupt or truncated safetensors file: tensor {name!r} needs bytes "
                                 f"[{begin}, {end}) of the data section ({size - self._data_start} present)",
                                 path=self.path)
            self._entries[name] = (dtype, shape, begin)
        self._mmap = None

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def dtype(self, name: str) -> np.dtype:
        return self._entries[name][0]

    def get(self, name: str) -> np.ndarray:
        """The tensor as a read-only memory-mapped numpy array (no copy until the caller converts it)."""
        if name not in self._entries:
            raise InputError(f"tensor {name!r} not found", path=self.path)
        dtype, shape, begin = self._entries[name]
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        start = self._data_start + begin
        count = int(np.prod(shape, dtype=np.int64))
        return np.frombuffer(self._mmap, dtype=dtype, count=count, offset=start).reshape(shape)


def write_safetensors(path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None):
    """Write tensors (numpy, bf16 via ml_dtypes allowed) in the given order to one safetensors file."""
    header, offset = {}, 0
    for name, array in tensors.items():
        nbytes = array.size * array.dtype.itemsize
        header[name] = {"dtype": _NAMES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = metadata
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # data section 8-byte aligned, as the reference writer does
    tmp = os.fspath(path) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for array in tensors.values():
            f.write(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    os.replace(tmp, path)
