"""Files of a global index folder: the manifest, data-file checksums, durable writes and the commit lock.

Folder layout. ``MANIFEST.json`` (format, version, generation, kind, dim, storage, parameters, segments,
tombstones, faiss file, and bytes + crc32 of every data file); ``seg-<gen>.ids.npy`` and (exact)
``seg-<gen>.vec.npy``: rows committed by commit <gen>; ``tomb-<gen>.npy``: sorted removed rows;
``ivfpq-<gen>.faiss``: the serialised faiss index. :meth:`GlobalIndex.save` writes new data files under
new names and fsyncs them, then writes the manifest to a temporary file, fsyncs it, swaps it in with
``os.replace`` and fsyncs the folder: a crash before the swap leaves the previous manifest and its
untouched files, so opening gives the last committed state. The next commit deletes unnamed files.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from glocal.errors import DamagedIndexError
from glocal.io.atomic import (
    FileLock,
    crc32_file,
    file_damage,
    fsync_dir,
    read_versioned_json,
    with_self_checksum,
    write_json_atomic,
)
from glocal.io.versions import current

__all__ = [
    "DATA_FILE",
    "FORMAT",
    "MANIFEST",
    "NAMED_FILE",
    "VERSION",
    "GlobalIndexError",
    "commit_lock",
    "crc32_file",
    "fsync_dir",
    "read_manifest",
    "remove_unnamed",
    "verify_files",
    "write_file",
    "write_manifest",
]

FORMAT = "glocal-global-index"
VERSION = current(FORMAT)
MANIFEST = "MANIFEST.json"
DATA_FILE = re.compile(r"^(seg-\d+\.(vec|ids)\.npy|tomb-\d+\.npy|ivfpq-\d+\.faiss|MANIFEST\.json\.tmp)$")
"""Names of the files a commit writes (data files and the temporary manifest); others are never deleted."""
NAMED_FILE = re.compile(r"^(seg-\d+\.(vec|ids)\.npy|tomb-\d+\.npy|ivfpq-\d+\.faiss)$")
"""Names a manifest may give its data files: plain names in the folder, as a commit writes them."""


class GlobalIndexError(DamagedIndexError):
    """A global index folder is missing, not ours, of a newer version, damaged, or misused."""


def write_file(path: Path, data: npt.NDArray | bytes) -> dict[str, int]:
    """Write a new data file durably (an array as ``.npy``, or raw bytes); return its manifest entry
    (bytes, crc32)."""
    with open(path, "wb") as f:
        if isinstance(data, bytes):
            f.write(data)
        else:
            np.lib.format.write_array(f, np.ascontiguousarray(data), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": path.stat().st_size, "crc32": crc32_file(path)}


def read_manifest(root: Path) -> dict[str, Any]:
    """The parsed ``MANIFEST.json`` of ``root``, after checking its format and version.

    :raises GlobalIndexError: no manifest, not JSON, another format, or a newer version.
    """
    path = root / MANIFEST
    if not path.exists():
        raise GlobalIndexError(f"{root}: not a global index (no {MANIFEST})")
    manifest = read_versioned_json(path, FORMAT, VERSION, GlobalIndexError)
    _check_file_names(path, manifest)
    return manifest


def _check_file_names(path: Path, manifest: dict[str, Any]) -> None:
    """Refuse a manifest naming a data file other than the plain names a commit writes (no path, no ``..``),
    so that nothing outside the folder is ever read, kept or deleted on its word."""
    try:
        names = list(manifest["files"])
        for seg in manifest["segments"]:
            names += [seg[k] for k in ("ids", "vectors") if seg.get(k) is not None]
        names += [manifest[k] for k in ("tombstones", "faiss") if manifest.get(k) is not None]
    except (KeyError, TypeError) as e:
        raise GlobalIndexError(f"{path}: incomplete or inconsistent manifest ({e!r})") from None
    for name in names:
        if not isinstance(name, str) or not NAMED_FILE.match(name):
            raise GlobalIndexError(f"{path}: names the data file {name!r}, which is not a plain index file name; "
                                   "the manifest is damaged or crafted, rebuild the index")


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Atomically replace ``root / MANIFEST`` (temporary file, fsync, ``os.replace``, fsync of the folder)."""
    write_json_atomic(root / MANIFEST, with_self_checksum(manifest))


def verify_files(root: Path, manifest: dict[str, Any], *, verify: bool = True) -> None:
    """Check that every data file the manifest names exists with its recorded size and, with ``verify``,
    its recorded crc32 (reads the files once).

    :raises GlobalIndexError: a file is missing, of another size, or (``verify``) damaged.
    """
    for name, entry in manifest["files"].items():
        path = root / name
        why = file_damage(path, entry["bytes"], entry["crc32"] if verify else None)
        if why == "missing":
            raise GlobalIndexError(f"{path}: data file named by {root / MANIFEST} is missing")
        if why is not None:
            raise GlobalIndexError(f"{path}: {why}{'; the file is damaged' if why.startswith('checksum') else ''}")


@contextmanager
def commit_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive, non-blocking ``flock`` on ``root / "LOCK"`` for the block (released on exit).

    :raises GlobalIndexError: another process holds the lock.
    """
    try:
        lock = FileLock(root / "LOCK")
    except BlockingIOError:
        raise GlobalIndexError(f"{root}: another process is committing to this index") from None
    with lock:
        yield


def remove_unnamed(root: Path, keep: Iterable[str]) -> None:
    """Delete the files of ``root`` that a commit writes (:data:`DATA_FILE`) but ``keep`` does not name."""
    keep = set(keep)
    for p in root.iterdir():
        if DATA_FILE.match(p.name) and p.name not in keep:
            p.unlink(missing_ok=True)
