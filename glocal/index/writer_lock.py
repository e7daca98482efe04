"""The writer lock of an index folder: one writer at a time (``add``, ``remove``, ``compact``), any readers.

The lock is an ``flock`` on ``<name>/WRITER.LOCK``. Compaction swaps folders with two renames
(``<name>`` -> ``<name>.old``, ``<name>.compacting`` -> ``<name>``), and a lock file moves with its
folder, so a lock alone would not say which folder a writer got. Hence:

- compaction holds the old folder's lock from before its copy until after both renames, and the new
  folder's lock from before the second rename until after it: whichever folder is at ``<name>`` during a
  compaction (and ``<name>.compacting`` between the renames) is locked;
- a writer locks the file it opened through the path ``<name>/WRITER.LOCK``, then checks that this path
  still leads to the very file it locked (same device and inode). If a swap moved it meanwhile it tries
  again, so the lock it keeps is the one of the folder now at ``<name>``, which no compaction can swap while
  it is held. A writer finding no ``<name>`` but a locked ``<name>.compacting`` is between the renames and
  is told the index is busy; an unlocked one is what a crash between the renames left, explained when the
  index is opened.

Nothing is written outside the folder, and readers take no lock: they are never blocked.
"""
from __future__ import annotations

import os
from pathlib import Path

from glocal.errors import BusyIndexError, DamagedIndexError, GlocalError, StorageError
from glocal.index.collection_manifest import COMPACTING_SUFFIX, read_manifest
from glocal.io.atomic import STORAGE_ERRNOS, FileLock

LOCK_FILE = "WRITER.LOCK"
#: how often a writer retries when a compaction swapped the folder while it was taking the lock
_ATTEMPTS = 5


def _busy(path: Path) -> BusyIndexError:
    return BusyIndexError(f"{path}: another process is writing to this index (add, remove or compact); open it "
                          "read-only or try again later")


def _cannot_lock(path: Path, exc: OSError) -> GlocalError:
    """A full, over-quota or read-only disk is a :class:`StorageError`; anything else a damaged folder."""
    if isinstance(exc, GlocalError):
        return exc
    if exc.errno in STORAGE_ERRNOS:
        return StorageError(f"{path}: {STORAGE_ERRNOS[exc.errno]} while taking the writer lock; nothing was changed")
    return DamagedIndexError(f"{path}: cannot take the writer lock ({exc.strerror or exc})")


def _lock(path: Path) -> FileLock:
    """The lock of the folder ``path`` (which must exist)."""
    try:
        return FileLock(path / LOCK_FILE)
    except BlockingIOError:
        raise _busy(path) from None
    except OSError as exc:
        raise _cannot_lock(path, exc) from None


class IndexWriterLock:
    """The writer lock of the index folder ``path`` (module docstring); :meth:`release` frees it."""

    def __init__(self, path: Path, held: FileLock) -> None:
        self.path = Path(path)
        self._held: FileLock | None = held

    @classmethod
    def take(cls, path: Path) -> IndexWriterLock:
        """Lock the index folder at ``path``; nothing is waited for. Take it before reading the folder.

        :raises BusyIndexError: another process writes to or compacts the index.
        :raises DamagedIndexError: no index at ``path`` (the message says why), or the lock cannot be opened.
        """
        path = Path(path)
        for _ in range(_ATTEMPTS):
            if not path.is_dir():
                fresh = path.with_name(path.name + COMPACTING_SUFFIX)
                if fresh.is_dir():
                    try:
                        FileLock(fresh / LOCK_FILE).release()
                    except BlockingIOError:
                        raise _busy(path) from None  # a compaction between its two renames
                    except OSError:
                        continue  # renamed meanwhile: look again
                read_manifest(path)  # raises: no such folder, or an interrupted compaction
            elif not (path / "manifest.json").exists():
                try:
                    read_manifest(path)  # raises: not an index (and no lock file is left in that folder)
                except DamagedIndexError:
                    if path.is_dir():
                        raise
                    continue  # a compaction's first rename moved the folder while we looked: look again
            try:
                held = FileLock(path / LOCK_FILE)
            except BlockingIOError:
                raise _busy(path) from None
            except FileNotFoundError:
                continue  # the folder was renamed away meanwhile
            except OSError as exc:
                raise _cannot_lock(path, exc) from None
            mine = os.fstat(held.fileno())
            try:
                now = os.stat(path / LOCK_FILE)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                return cls(path, held)
            held.release()  # a compaction swapped the folder while we took the lock: the one at path now counts
        raise _busy(path)

    @classmethod
    def take_new(cls, path: Path) -> IndexWriterLock:
        """Lock a folder no other process knows of yet (compaction's ``<name>.compacting``)."""
        return cls(path, _lock(Path(path)))

    def release(self) -> None:
        """Free the lock; a second call does nothing."""
        if self._held is not None:
            self._held.release()
            self._held = None

    def __enter__(self) -> IndexWriterLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = ["LOCK_FILE", "IndexWriterLock"]
