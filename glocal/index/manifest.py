"""The manifest of a persistent ASMK index folder: the single small file that says what is committed.

Commit protocol (crash safety): new data files are written under fresh names and fsync'ed first; then the
manifest is written to a temporary file, fsync'ed and atomically swapped in with ``os.replace``, and the
folder is fsync'ed. A crash at any point leaves either the old or the new manifest, and every file a
manifest names is complete. Files no manifest names (left by a crash) are deleted by the next writer.
"""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

FORMAT = "glocal-asmk-index"
VERSION = 1
MANIFEST = "MANIFEST.json"
LOCK = "LOCK"


class IndexFormatError(Exception):
    """An index folder is missing, not an ASMK index, of an unknown version, or damaged."""


def read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.exists():
        raise IndexFormatError(f"{root}: not an ASMK index (no {MANIFEST})")
    try:
        m = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IndexFormatError(f"{path}: not valid JSON ({e})") from None
    if m.get("format") != FORMAT:
        raise IndexFormatError(f"{path}: format is {m.get('format')!r}, expected {FORMAT!r}")
    if int(m.get("version", 0)) > VERSION:
        raise IndexFormatError(f"{path}: index version {m['version']} is newer than this glocal reads ({VERSION})")
    return m


def fsync_dir(root: Path) -> None:
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Atomically replace the manifest (temporary file, fsync, ``os.replace``, fsync of the folder)."""
    tmp = root / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(manifest, indent=1))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / MANIFEST)
    fsync_dir(root)


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
        self._fh = open(root / LOCK, "a+")
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.close()
            raise IndexFormatError(f"{root}: another process has this index open for writing") from None

    def release(self) -> None:
        if not self._fh.closed:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
