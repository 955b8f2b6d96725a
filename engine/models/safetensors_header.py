"""Read a .safetensors header without loading any weight.

Layout (safetensors spec): 8-byte little-endian unsigned header length N, then N bytes of UTF-8 JSON mapping
tensor name -> {"dtype", "shape", "data_offsets": [begin, end]} plus an optional "__metadata__" dict of
strings, then the raw tensor bytes. We read only the first 8 + N bytes.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from engine.models.errors import HeaderError

try:  # about 2x faster on big headers; optional, plain json gives the same result
    from orjson import JSONDecodeError as _OrjsonError
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - depends on the environment
    _fast_loads = None
    _OrjsonError = ValueError

# Real headers are at most a few MB (tens of thousands of tensors); the reference implementation caps at
# 100 MB. A bigger length means a corrupt file or not a safetensors file at all.
MAX_HEADER_BYTES = 100 * 1024 * 1024

# Bytes per element, for size accounting and for checking data_offsets against shapes.
DTYPE_BYTES: dict[str, float] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
    "F4": 0.5, "F6_E2M3": 0.75, "F6_E3M2": 0.75,
}


class TensorInfo(NamedTuple):  # a tuple, not a dataclass: SDXL headers hold ~2500 of these
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


class LazyTensors(Mapping[str, TensorInfo]):
    """Tensor entries converted on access. A scan classifies a file from a handful of names and shapes, so
    building ~2500 TensorInfo objects per SDXL checkpoint would be most of its cost."""

    def __init__(self, path: Path, doc: dict[str, object], data_size: int):
        self._path = path
        self._doc = doc
        self._data_size = data_size
        self._names = [n for n in doc if n != "__metadata__"]

    def __getitem__(self, name: str) -> TensorInfo:
        if name == "__metadata__":
            raise KeyError(name)
        entry = self._doc[name]
        return _tensor_fast(entry, self._data_size) or _tensor(self._path, name, entry, self._data_size)

    def __contains__(self, name: object) -> bool:
        return name != "__metadata__" and name in self._doc

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


@dataclass
class Header:
    path: Path
    file_size: int
    header_size: int
    tensors: Mapping[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    dtype_bytes: dict[str, int] | None = None  # precomputed by the light check

    @property
    def dtypes(self) -> Counter[str]:
        """Bytes per dtype (so `main_dtype` reflects the weights, not the many tiny bias tensors)."""
        if self.dtype_bytes is not None:
            return Counter(self.dtype_bytes)
        out: Counter[str] = Counter()
        for t in self.tensors.values():
            out[t.dtype] += t.end - t.begin
        return out

    @property
    def main_dtype(self) -> str | None:
        counts = self.dtypes
        return counts.most_common(1)[0][0] if counts else None

    @property
    def parameters(self) -> int:
        total = 0
        for t in self.tensors.values():
            n = 1
            for d in t.shape:
                n *= d
            total += n
        return total


def _fail(path: Path, detail: str) -> HeaderError:
    return HeaderError(f"{path}: not a valid safetensors file: {detail}")


def read_header(path: Path | str, *, check_offsets: bool = True, lazy: bool = False) -> Header:
    """Parse the header; raise HeaderError with a specific reason for anything malformed.

    `lazy` (used by scans) checks every entry's dtype and data range in one cheap pass and converts tensor
    entries only when asked for; any entry that fails the cheap pass gets the full, precise check.
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise HeaderError(f"{path}: file not found") from exc
    except PermissionError as exc:
        raise HeaderError(f"{path}: permission denied") from exc
    if stat.S_ISDIR(st.st_mode):
        raise HeaderError(f"{path}: is a directory, expected a .safetensors file")
    if not stat.S_ISREG(st.st_mode):
        raise HeaderError(f"{path}: not a regular file, expected a .safetensors file")
    size = st.st_size
    if size < 8:
        raise _fail(path, f"file is {size} bytes, shorter than the 8-byte length prefix (truncated?)")
    try:
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            (n,) = struct.unpack("<Q", prefix)
            if n == 0:
                raise _fail(path, "header length is 0")
            if n > MAX_HEADER_BYTES:
                raise _fail(path, f"header length {n} is larger than the {MAX_HEADER_BYTES}-byte limit")
            if 8 + n > size:
                raise _fail(path, f"header length {n} runs past the end of the {size}-byte file (truncated?)")
            raw = fh.read(n)
    except OSError as exc:
        raise HeaderError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    doc = None
    if _fast_loads is not None:
        try:
            doc = _fast_loads(raw)
        except _OrjsonError:
            doc = None  # let the json module produce the precise message below
    try:
        if doc is None:
            doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _fail(path, f"header is not UTF-8 (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise _fail(path, f"header is not valid JSON ({exc.msg} at char {exc.pos})") from exc
    if not isinstance(doc, dict):
        raise _fail(path, f"header JSON is a {type(doc).__name__}, expected an object")
    data_size = size - 8 - n
    if lazy and check_offsets:
        dtype_bytes = _light_check(doc, data_size)
        if dtype_bytes is not None:
            meta = doc.get("__metadata__")
            metadata = {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}
            return Header(path=path, file_size=size, header_size=n, tensors=LazyTensors(path, doc, data_size),
                          metadata=metadata, dtype_bytes=dtype_bytes)
    tensors: dict[str, TensorInfo] = {}
    metadata: dict[str, str] = {}
    limit = data_size if check_offsets else None
    for name, entry in doc.items():
        if name == "__metadata__":
            if isinstance(entry, dict):
                metadata = {str(k): str(v) for k, v in entry.items()}
            continue
        tensors[name] = _tensor_fast(entry, limit) or _tensor(path, name, entry, limit)
    return Header(path=path, file_size=size, header_size=n, tensors=tensors, metadata=metadata)


def _light_check(doc: dict[str, object], data_size: int) -> dict[str, int] | None:
    """Bytes per dtype when every entry has a known dtype and an in-bounds data range, else None."""
    out: dict[str, int] = {}
    try:
        for name, entry in doc.items():
            if name == "__metadata__":
                continue
            dtype = entry["dtype"]  # type: ignore[index]
            begin, end = entry["data_offsets"]  # type: ignore[index]
            if not 0 <= begin <= end <= data_size or dtype not in DTYPE_BYTES:
                return None
            out[dtype] = out.get(dtype, 0) + end - begin
    except (TypeError, KeyError, ValueError):
        return None
    return out


def _tensor_fast(entry: object, data_size: int | None) -> TensorInfo | None:
    """The common, valid case in a few type checks; None sends the entry to `_tensor` for a precise message."""
    try:
        dtype = entry["dtype"]  # type: ignore[index]
        shape = entry["shape"]  # type: ignore[index]
        begin, end = entry["data_offsets"]  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return None
    if (dtype not in DTYPE_BYTES or type(begin) is not int or type(end) is not int or not 0 <= begin <= end
            or (data_size is not None and end > data_size) or type(shape) is not list):
        return None
    for d in shape:
        if type(d) is not int or d < 0:
            return None
    return TensorInfo(dtype, tuple(shape), begin, end)


def _tensor(path: Path, name: str, entry: object, data_size: int | None) -> TensorInfo:
    if not isinstance(entry, dict):
        raise _fail(path, f"tensor {name!r}: entry is not an object")
    dtype = entry.get("dtype")
    shape = entry.get("shape")
    offsets = entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise _fail(path, f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise _fail(path, f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise _fail(path, f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end] with begin <= end")
    if data_size is not None and offsets[1] > data_size:
        raise _fail(
            path, f"tensor {name!r}: data ends at byte {offsets[1]} but the file holds {data_size} data bytes (truncated?)"
        )
    return TensorInfo(dtype=dtype, shape=tuple(shape), begin=offsets[0], end=offsets[1])


def write_header_only(path: Path | str, tensors: dict[str, tuple[str, tuple[int, ...]]], *,
                      metadata: dict[str, str] | None = None, sparse: bool = True) -> None:
    """Write a structurally valid safetensors file whose tensor bytes are zeros.

    With `sparse` the data region is a hole (truncate), so a "12 GB" checkpoint costs a few KB of disk:
    used by tests and benchmarks to build realistic headers cheaply.
    """
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = 1
        for d in shape:
            n *= d
        nbytes = int(n * DTYPE_BYTES[dtype])
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the spec pads the header to 8-byte alignment with spaces
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        if sparse:
            fh.truncate(8 + len(raw) + offset)
        else:
            fh.write(b"\0" * offset)
    os.utime(path)
