"""One file of named numpy arrays, memory-mapped for reading: the unit the persistent index is made of.

Layout (little endian)::

    b"GLOCALSG"  u32 version  u32 meta_len  meta_json (space padded)  [array bytes, each 64-byte aligned]

``meta_json`` holds free metadata and, for every array, its dtype, shape and byte offset in the file, so a
reader maps the file once and takes zero-copy views. Files are written completely, fsync'ed, and only then
named in the index manifest with their size and CRC32; they are never modified afterwards.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from glocal.errors import DamagedIndexError
from glocal.io.atomic import crc32_file
from glocal.io.versions import check_version, current

MAGIC = b"GLOCALSG"
VERSION = current("glocal-segment")
_HEAD = struct.Struct("<8sII")
_ALIGN = 64


class SegmentFileError(DamagedIndexError):
    """A segment file is missing, truncated, not one of ours, or fails its checksum."""


def _align(n: int) -> int:
    return n + (-n) % _ALIGN


def _layout(specs: Mapping[str, tuple[np.dtype, tuple[int, ...]]], meta: Mapping[str, Any]) -> tuple[bytes, dict, int]:
    """Header bytes, array table and total size for arrays of the given dtypes and shapes."""
    table: dict[str, dict] = {}
    # offsets depend on the header length, which depends on the offsets: iterate until stable
    header_len = _align(_HEAD.size + 256)
    while True:
        offset = header_len
        for name, (dtype, shape) in specs.items():
            nbytes = int(np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64)))
            table[name] = {"dtype": np.dtype(dtype).str, "shape": [int(s) for s in shape], "offset": offset}
            offset = _align(offset + nbytes)
        body = json.dumps({"meta": dict(meta), "arrays": table}).encode()
        needed = _align(_HEAD.size + len(body))
        if needed <= header_len:
            body += b" " * (header_len - _HEAD.size - len(body))
            return _HEAD.pack(MAGIC, VERSION, len(body)) + body, table, offset
        header_len = needed


def write_arrays(path: str | Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> int:
    """Write ``arrays`` to a new file at ``path`` and fsync it. Returns the CRC32 of the whole file."""
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    head, table, total = _layout({k: (v.dtype, v.shape) for k, v in arrays.items()}, meta or {})
    crc = zlib.crc32(head)
    pos = len(head)
    with open(path, "wb") as f:
        f.write(head)
        for name, arr in arrays.items():
            pad = table[name]["offset"] - pos
            if pad:
                f.write(b"\0" * pad)
                crc = zlib.crc32(b"\0" * pad, crc)
            raw = memoryview(arr).cast("B") if arr.size else b""
            f.write(raw)
            crc = zlib.crc32(raw, crc)
            pos = table[name]["offset"] + arr.nbytes
        if total > pos:
            f.write(b"\0" * (total - pos))
            crc = zlib.crc32(b"\0" * (total - pos), crc)
        f.flush()
        os.fsync(f.fileno())
    return crc


class ArrayWriter:
    """A new file whose arrays are filled in place through writable memory maps (for streaming merges).

    ``views[name]`` are numpy arrays backed by the file; call :meth:`finish` to flush, fsync and get the
    CRC32.
    """

    def __init__(self, path: str | Path, specs: Mapping[str, tuple[np.dtype, tuple[int, ...]]],
                 meta: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        head, table, total = _layout(specs, meta or {})
        with open(self.path, "wb") as f:
            f.write(head)
            f.truncate(total)
        self._fh = open(self.path, "r+b")
        self._mm = mmap.mmap(self._fh.fileno(), total) if total > 0 else None
        self.views = {name: _view(self._mm, t) for name, t in table.items()}

    def finish(self) -> int:
        self.views = {}
        if self._mm is not None:
            self._mm.flush()  # msync: the data is in the file from here on
            try:
                self._mm.close()
            except BufferError:
                pass  # a caller still holds a view; the map goes away with it
        os.fsync(self._fh.fileno())
        self._fh.close()
        return file_crc32(self.path)


def _view(buf: mmap.mmap | None, spec: dict) -> np.ndarray:
    dtype = np.dtype(spec["dtype"])
    shape = tuple(spec["shape"])
    count = int(np.prod(shape, dtype=np.int64))
    if count == 0 or buf is None:
        return np.zeros(shape, dtype)
    return np.frombuffer(buf, dtype=dtype, count=count, offset=spec["offset"]).reshape(shape)


def file_crc32(path: str | Path, block: int = 1 << 24) -> int:
    """CRC32 of a whole file, read in blocks."""
    return crc32_file(path, block)


class ArrayFile:
    """Read-only memory map of a file written by :func:`write_arrays` or :class:`ArrayWriter`.

    :param expected_size: the size recorded in the manifest; a different size means a torn or foreign file.
    """

    def __init__(self, path: str | Path, expected_size: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise SegmentFileError(f"{self.path}: file is missing")
        size = self.path.stat().st_size
        if expected_size is not None and size != expected_size:
            raise SegmentFileError(f"{self.path}: expected {expected_size} bytes, found {size} (truncated or replaced)")
        with open(self.path, "rb") as f:
            head = f.read(_HEAD.size)
            if len(head) < _HEAD.size or head[:8] != MAGIC:
                raise SegmentFileError(f"{self.path}: not a glocal segment file (bad magic)")
            _, version, meta_len = _HEAD.unpack(head)
            check_version("glocal-segment", version, self.path, SegmentFileError)
            try:
                body = json.loads(f.read(meta_len))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise SegmentFileError(f"{self.path}: header is not valid JSON ({e})") from None
        self.meta: dict = body["meta"]
        self._table: dict = body["arrays"]
        for name, spec in self._table.items():
            end = spec["offset"] + np.dtype(spec["dtype"]).itemsize * int(np.prod(spec["shape"], dtype=np.int64))
            if end > size:
                raise SegmentFileError(f"{self.path}: array {name!r} ends at byte {end}, past the end ({size})")
        self._fh = open(self.path, "rb")
        self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ) if size > 0 else None
        self.arrays = {name: _view(self._mm, spec) for name, spec in self._table.items()}

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def close(self) -> None:
        self.arrays = {}
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass  # views still alive elsewhere: the map is released when they are
        self._fh.close()
