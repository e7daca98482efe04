"""The manifest of a persistent ASMK index folder: the single small file that says what is committed.

Commit protocol (crash safety): new data files are written under fresh names and fsync'ed first; then the
manifest is written to a temporary file, fsync'ed and atomically swapped in with ``os.replace``, and the
folder is fsync'ed. A crash at any point leaves either the old or the new manifest, and every file a
manifest names is complete. Files no manifest names (left by a crash) are deleted by the next writer.
"""
from __future__ import annotations

import os  # noqa: F401  (tests reach os.replace as ``manifest.os.replace`` to simulate a crash)
import re
from pathlib import Path
from typing import Any

from glocal.errors import DamagedIndexError
from glocal.io.atomic import FileLock, read_versioned_json, with_self_checksum, write_json_atomic
from glocal.io.atomic import fsync_dir as fsync_dir
from glocal.io.versions import current

FORMAT = "glocal-asmk-index"
VERSION = current(FORMAT)
MANIFEST = "MANIFEST.json"
LOCK = "LOCK"
#: names of the data files a writer creates (``codebook.gls``, ``seg-00000001.gls``, ``tomb-00000004.gls``);
#: a manifest naming anything else (a path, ``..``) is refused, so no file outside the folder is ever touched
DATA_FILE = re.compile(r"^(codebook|seg-\d{8,}|tomb-\d{8,})\.gls$")


class IndexFormatError(DamagedIndexError):
    """An index folder is missing, not an ASMK index, of an unknown version, or damaged."""


def read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.exists():
        raise IndexFormatError(f"{root}: not an ASMK index (no {MANIFEST})")
    manifest = read_versioned_json(path, FORMAT, VERSION, IndexFormatError, "index version")
    check_file_names(path, manifest)
    return manifest


def check_file_names(path: Path, manifest: dict[str, Any]) -> None:
    """Refuse a manifest (at ``path``) naming a data file other than the plain names a writer creates.

    :raises IndexFormatError: the manifest and the bad name.
    """
    try:
        entries = [manifest["codebook"], *manifest["segments"]]
        if manifest.get("tombstones"):
            entries.append(manifest["tombstones"])
        names = [e["file"] for e in entries]
    except (KeyError, TypeError) as e:
        raise IndexFormatError(f"{path}: incomplete manifest ({e!r})") from None
    for name in names:
        if not isinstance(name, str) or not DATA_FILE.match(name):
            raise IndexFormatError(f"{path}: names the data file {name!r}, which is not a plain index file name "
                                   "(codebook.gls, seg-<n>.gls, tomb-<n>.gls); the manifest is damaged or "
                                   "crafted, rebuild the index")


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Atomically replace the manifest (temporary file, fsync, ``os.replace``, fsync of the folder)."""
    write_json_atomic(root / MANIFEST, with_self_checksum(manifest))


def referenced_files(manifest: dict[str, Any]) -> set[str]:
    names = {manifest["codebook"]["file"]}
    names.update(s["file"] for s in manifest["segments"])
    if manifest.get("tombstones"):
        names.add(manifest["tombstones"]["file"])
    return names


def remove_orphans(root: Path, manifest: dict[str, Any]) -> list[str]:
    """Delete data files the manifest does not name (left by a crash before a commit). Writers only."""
    keep = referenced_files(manifest)
    removed = []
    for p in root.iterdir():
        if p.suffix == ".gls" and p.name not in keep or p.name == MANIFEST + ".tmp":
            p.unlink()
            removed.append(p.name)
    return removed


class WriterLock:
    """Exclusive advisory lock (``flock``) on ``LOCK``: one writer per index folder at a time."""

    def __init__(self, root: Path) -> None:
        try:
            self._lock = FileLock(root / LOCK)
        except BlockingIOError:
            raise IndexFormatError(f"{root}: another process has this index open for writing") from None

    def release(self) -> None:
        self._lock.release()
