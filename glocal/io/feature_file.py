"""Feature files: one append-only file per collection, read lazily, safe against crashes.

Why this format (and not HDF5 or ``.npz``): a collection grows by appending images (``glocal index add``),
must be readable one image at a time (re-ranking reads only the shortlist), and must survive a crash in
the middle of an append.  HDF5 would add a compiled dependency and a crash during a write can corrupt
the whole file; ``.npz`` cannot be appended to.  Here every image is one self-describing record,
checksummed, written at the end of the file; a torn last record is detected on open and ignored (and cut
off by the next writer), so nothing committed before it is lost. Every read of a record's arrays checks its
CRC32: a record damaged later (bit rot, a bad disk) raises :class:`FeatureFileError` naming the file, the
record number and the image name, never returns wrong features. A middle record whose metadata cannot be
parsed is kept as a damaged placeholder (its position stays, so later records keep their ids) and raises when
read; :meth:`RecordFile.check` CRC-checks every record (``glocal index verify``).

Layout (little endian)::

    file   = header record*
    header = b"GLOCALFF" u32 version u32 reserved
    record = b"REC1" u64 payload_len u32 crc32(payload) payload
    payload = u32 meta_len meta_json (padded to 16 bytes) array_bytes...

``meta_json`` holds the record's ``name``, free ``attrs`` and, for each array, its dtype, shape and offset
inside the payload.  No pickle anywhere: arrays are raw bytes, metadata is JSON.
"""
from __future__ import annotations

import json
import math
import os
import struct
import warnings
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from glocal.errors import DamagedIndexError
from glocal.io.atomic import fsync_dir
from glocal.io.versions import check_version, current
from glocal.records import ImageFeatures

FILE_MAGIC = b"GLOCALFF"
FORMAT_VERSION = current("glocal-feature-file")
RECORD_MAGIC = b"REC1"
_HEADER = struct.Struct("<8sII")
_RECORD = struct.Struct("<4sQI")
_ALIGN = 16


class FeatureFileError(DamagedIndexError):
    """A feature file is not one of ours, has an unknown version, or a record is corrupt."""


def _pad(n: int) -> int:
    return (-n) % _ALIGN


def encode_record(name: str, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any] | None = None) -> bytes:
    """Serialise one named record of arrays (plus JSON-able attrs) into bytes, header included."""
    specs = {}
    blobs = []
    offset = 0
    for key, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype.hasobject:
            raise TypeError(f"record {name!r}: array {key!r} has dtype object, which is not stored")
        specs[key] = {"dtype": arr.dtype.str, "shape": list(arr.shape), "offset": offset}
        raw = arr.tobytes()
        blobs.append(raw + b"\0" * _pad(len(raw)))
        offset += len(raw) + _pad(len(raw))
    meta = json.dumps({"name": name, "attrs": dict(attrs or {}), "arrays": specs}).encode()
    meta += b" " * _pad(4 + len(meta))
    payload = struct.pack("<I", len(meta)) + meta + b"".join(blobs)
    return _RECORD.pack(RECORD_MAGIC, len(payload), zlib.crc32(payload)) + payload


@dataclass(frozen=True)
class RecordInfo:
    """Where a record lives in the file and what it contains (read at open time, arrays not loaded)."""

    name: str
    attrs: dict
    arrays: dict
    payload_offset: int
    payload_len: int
    crc: int
    data_offset: int  # absolute offset of the first array byte
    damaged: str | None = None  # why the record cannot be used (metadata unreadable), found at open


class RecordFile:
    """Append-only file of named records of numpy arrays.

    ``RecordFile(path)`` opens for reading (the file must exist); ``RecordFile(path, writable=True)``
    creates it if needed and allows :meth:`append`.  Records are indexed at open time by reading only
    their headers; arrays are read on demand with :meth:`read`.
    """

    def __init__(self, path: str | Path, writable: bool = False) -> None:
        self.path = Path(path)
        self.writable = writable
        if not self.path.exists():
            if not writable:
                raise FeatureFileError(f"{self.path}: file does not exist")
            with open(self.path, "wb") as f:
                f.write(_HEADER.pack(FILE_MAGIC, FORMAT_VERSION, 0))
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(self.path.parent)  # the new file's entry in its folder
        self.records: list[RecordInfo] = []
        self._by_name: dict[str, int] = {}
        self._valid_end = self._scan()
        self._fh = open(self.path, "rb")

    def _scan(self) -> int:
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(_HEADER.size)
            if len(head) < _HEADER.size or head[:8] != FILE_MAGIC:
                raise FeatureFileError(f"{self.path}: not a glocal feature file (bad magic)")
            _, version, _ = _HEADER.unpack(head)
            check_version("glocal-feature-file", version, self.path, FeatureFileError)
            pos = _HEADER.size
            while pos < size:
                f.seek(pos)
                rec = f.read(_RECORD.size)
                if len(rec) < _RECORD.size:
                    return self._torn(pos, "truncated record header")
                magic, plen, crc = _RECORD.unpack(rec)
                if magic != RECORD_MAGIC:
                    return self._torn(pos, "bad record magic")
                start = pos + _RECORD.size
                if start + plen > size:
                    return self._torn(pos, "record extends past the end of the file")
                (mlen,) = struct.unpack("<I", f.read(4))
                last = pos + _RECORD.size + plen == size
                try:
                    meta = json.loads(f.read(min(mlen, plen)))
                    name, attrs, arrays = meta["name"], meta["attrs"], meta["arrays"]
                    if not isinstance(name, str):
                        raise TypeError("name is not a string")
                except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
                    if last:
                        return self._torn(pos, "record metadata is not valid JSON")
                    # damage in the middle: keep the position (ids of later records), refuse reading it
                    self.records.append(RecordInfo("", {}, {}, start, plen, crc, start, damaged=(
                        "its metadata is unreadable")))
                    pos = start + plen
                    continue
                if last:
                    # last record: check its checksum, a crash may have left it half written
                    f.seek(start)
                    if zlib.crc32(f.read(plen)) != crc:
                        return self._torn(pos, "checksum mismatch in the last record")
                info = RecordInfo(name, attrs, arrays, start, plen, crc, start + 4 + mlen)
                self._by_name[info.name] = len(self.records)
                self.records.append(info)
                pos = start + plen
        return pos

    def _torn(self, pos: int, why: str) -> int:
        warnings.warn(
            f"{self.path}: {why} at byte {pos}; ignoring the incomplete tail "
            f"({len(self.records)} complete records kept)",
            stacklevel=3,
        )
        return pos

    # -- reading ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.records]

    def index_of(self, name: str) -> int:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"{self.path}: no record named {name!r}") from None

    def read(self, i: int, verify: bool = True) -> tuple[str, dict, dict[str, np.ndarray]]:
        """Read record ``i``: (name, attrs, arrays). With ``verify`` the CRC32 is checked."""
        info = self.records[i]
        if info.damaged:
            raise self._damage(i, info.damaged)
        # pread: no shared file position, so concurrent readers (re-ranking threads) are safe
        payload = os.pread(self._fh.fileno(), info.payload_len, info.payload_offset)
        if verify and (len(payload) != info.payload_len or zlib.crc32(payload) != info.crc):
            raise self._damage(i, "checksum mismatch")
        base = info.data_offset - info.payload_offset
        arrays = {}
        for key, spec in info.arrays.items():
            dtype = np.dtype(spec["dtype"])
            count = math.prod(spec["shape"])
            arr = np.frombuffer(payload, dtype=dtype, count=count, offset=base + spec["offset"])
            arrays[key] = arr.reshape(spec["shape"])
        return info.name, info.attrs, arrays

    def _damage(self, i: int, why: str) -> FeatureFileError:
        name = self.records[i].name
        image = f" (image {name!r})" if name else " (image name unknown)"
        return FeatureFileError(f"{self.path}: record {i}{image} is damaged ({why}); rebuild the index or "
                                "remove the image")

    def check(self) -> list[tuple[int, str, str]]:
        """CRC-check every record (reads the whole file once); returns (record number, image name or "",
        why) for each damaged one."""
        bad = []
        for i, info in enumerate(self.records):
            if info.damaged:
                bad.append((i, info.name, info.damaged))
                continue
            payload = os.pread(self._fh.fileno(), info.payload_len, info.payload_offset)
            if len(payload) != info.payload_len or zlib.crc32(payload) != info.crc:
                bad.append((i, info.name, "checksum mismatch"))
        return bad

    def __iter__(self) -> Iterator[tuple[str, dict, dict[str, np.ndarray]]]:
        for i in range(len(self.records)):
            yield self.read(i)

    # -- writing ---------------------------------------------------------------------------------
    def append(self, name: str, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any] | None = None) -> int:
        """Append one record and make it durable (fsync). Returns its index."""
        return self.append_many([(name, arrays, attrs)])[0]

    def append_many(self, items: list[tuple[str, Mapping[str, np.ndarray], Mapping[str, Any] | None]],
                    *, shadow: bool = False) -> list[int]:
        """Append several records with one fsync. A crash leaves a prefix of them, never a broken file.

        :param shadow: allow a name already in the file: the new record shadows the old one for
            :meth:`index_of` (both stay readable by position). Names must still differ within ``items``.
        """
        if not self.writable:
            raise FeatureFileError(f"{self.path}: opened read-only")
        blobs: list[tuple[str, bytes]] = []
        for name, arrays, attrs in items:
            if (name in self._by_name and not shadow) or any(name == n for n, _ in blobs):
                raise FeatureFileError(f"{self.path}: a record named {name!r} already exists")
            blobs.append((name, encode_record(name, arrays, attrs)))
        with open(self.path, "r+b", buffering=0) as f:  # unbuffered: nothing is left to write after a failure
            f.truncate(self._valid_end)  # drop a torn tail left by an earlier crash
            f.seek(self._valid_end)
            try:
                for _, blob in blobs:
                    view = memoryview(blob)
                    while view:
                        view = view[f.write(view):]
                os.fsync(f.fileno())
            except OSError:  # e.g. the disk is full: take the records back, so nothing was added
                os.ftruncate(f.fileno(), self._valid_end)
                raise
        out = []
        pos = self._valid_end
        for name, blob in blobs:
            (mlen,) = struct.unpack_from("<I", blob, _RECORD.size)
            _, plen, crc = _RECORD.unpack_from(blob)
            meta = json.loads(blob[_RECORD.size + 4 : _RECORD.size + 4 + mlen])
            start = pos + _RECORD.size
            info = RecordInfo(name, meta["attrs"], meta["arrays"], start, plen, crc, start + 4 + mlen)
            self._by_name[name] = len(self.records)
            out.append(len(self.records))
            self.records.append(info)
            pos = start + plen
        self._valid_end = pos
        self._fh.close()
        self._fh = open(self.path, "rb")
        return out

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> RecordFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- ImageFeatures on top of records --------------------------------------------------------------
_FEATURE_KEYS = ("descriptors", "keypoints", "scales", "strengths", "global_descriptor", "regions", "orientations")


def features_to_record(f: ImageFeatures) -> tuple[dict[str, np.ndarray], dict]:
    arrays = {k: getattr(f, k) for k in _FEATURE_KEYS if getattr(f, k) is not None}
    return arrays, {"image_size": list(f.image_size)}


def features_from_record(name: str, attrs: dict, arrays: dict[str, np.ndarray]) -> ImageFeatures:
    h, w = attrs["image_size"]
    return ImageFeatures(
        name=name,
        image_size=(int(h), int(w)),
        descriptors=arrays["descriptors"],
        keypoints=arrays["keypoints"],
        scales=arrays["scales"],
        strengths=arrays["strengths"],
        global_descriptor=arrays.get("global_descriptor"),
        regions=arrays.get("regions"),
        orientations=arrays.get("orientations"),
    )


class ImageRecords:
    """:class:`ImageFeatures` kept one :class:`RecordFile` record per image (record name = image name).

    The lookup, iteration and closing of :class:`FeatureFile`; a subclass sets ``self.records`` and decodes
    one record in :meth:`__getitem__`.
    """

    records: RecordFile

    @property
    def path(self) -> Path:
        return self.records.path

    @property
    def names(self) -> list[str]:
        return self.records.names

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, name: str) -> bool:
        return name in self.records

    def __getitem__(self, i: int) -> ImageFeatures:
        raise NotImplementedError

    def get(self, name: str) -> ImageFeatures:
        """Features of the image ``name`` (as :meth:`__getitem__` decodes them)."""
        return self[self.records.index_of(name)]

    def __iter__(self) -> Iterator[ImageFeatures]:
        for i in range(len(self)):
            yield self[i]

    def view(self, positions: Sequence[int]) -> RecordView:
        """A lazy sequence of the images at ``positions``: each item is read when indexed (for
        ``glocal.rerank.shortlist.rerank(query, records.view(positions), scores)``)."""
        return RecordView(self, list(positions))

    def close(self) -> None:
        self.records.close()


class RecordView(Sequence[ImageFeatures]):
    """Read-only lazy sequence of stored images: ``view[k]`` reads one record (thread-safe ``pread``)."""

    def __init__(self, store: ImageRecords, positions: list[int]) -> None:
        self._store = store
        self._positions = positions

    def __len__(self) -> int:
        return len(self._positions)

    @overload
    def __getitem__(self, k: int) -> ImageFeatures: ...

    @overload
    def __getitem__(self, k: slice) -> RecordView: ...

    def __getitem__(self, k: int | slice) -> ImageFeatures | RecordView:
        if isinstance(k, slice):
            return RecordView(self._store, self._positions[k])
        return self._store[self._positions[k]]

    @property
    def names(self) -> list[str]:
        return [self._store.records.records[p].name for p in self._positions]


class FeatureFile(ImageRecords):
    """A collection's :class:`ImageFeatures`, one record per image (see the module docstring)."""

    def __init__(self, path: str | Path, writable: bool = False) -> None:
        self.records = RecordFile(path, writable=writable)

    def __getitem__(self, i: int) -> ImageFeatures:
        return features_from_record(*self.records.read(i))

    def append(self, features: list[ImageFeatures], *, shadow: bool = False) -> list[int]:
        """Append records (one fsync); ``shadow``: see :meth:`RecordFile.append_many`."""
        return self.records.append_many([(f.name, *features_to_record(f)) for f in features], shadow=shadow)
