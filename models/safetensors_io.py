"""Zero-copy reading of safetensors files as numpy views over a memory map.

The `safetensors` package's numpy backend cannot represent bfloat16; reading the (simple,
documented) file format ourselves gives every dtype through `ml_dtypes`, and memory-mapped
views mean a tensor is only paged in while it is being sent to its device.
Format: 8-byte little-endian header size, a JSON header `{name: {dtype, shape,
data_offsets: [begin, end]}, "__metadata__": {...}}`, then the raw data.
"""

from __future__ import annotations

import json
import mmap
import struct
from typing import Iterator

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
}


class SafetensorsFile:
    """A read-only safetensors file: `names()`, `shape(name)`, `dtype(name)`, `get(name)` (a view)."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
            self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        header.pop("__metadata__", None)
        self._data_start = 8 + header_len
        self._header = header

    def names(self) -> list[str]:
        return list(self._header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._header[name]["shape"])

    def dtype(self, name: str) -> np.dtype:
        code = self._header[name]["dtype"]
        if code not in _DTYPES:
            raise ValueError(f"tensor {name!r} in {self.path} has unsupported dtype {code}")
        return np.dtype(_DTYPES[code])

    def get(self, name: str) -> np.ndarray:
        """The tensor as a read-only numpy view of the mapped file (no copy)."""
        info = self._header[name]
        begin, end = info["data_offsets"]
        return np.frombuffer(self._mmap, dtype=self.dtype(name), count=(end - begin) // self.dtype(name).itemsize,
                             offset=self._data_start + begin).reshape(info["shape"])

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in self._header:
            yield name, self.get(name)


def save_file(tensors: dict[str, np.ndarray], path: str, metadata: dict[str, str] | None = None) -> None:
    """Writes numpy arrays (bfloat16 through ml_dtypes included) as a safetensors file."""
    codes = {np.dtype(v): k for k, v in _DTYPES.items()}
    header, offset, blobs = {}, 0, []
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        data = arr.tobytes()
        header[name] = {"dtype": codes[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for blob in blobs:
            f.write(blob)
