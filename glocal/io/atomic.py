"""Durable-file helpers shared by the index folders: fsync of a folder, atomic replacement of a JSON
manifest, a versioned-manifest reader, an exclusive writer lock, and the CRC-32 / SHA-256 of a file.

Both folder formats (:mod:`glocal.index.manifest` for ASMK, :mod:`glocal.index.global_files` for the
global index) commit the same way: data files first, then the manifest through
:func:`write_json_atomic`; each keeps its own format name, error type and messages.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from glocal.errors import GlocalError, StorageError

__all__ = ["FileLock", "crc32_file", "fsync_dir", "read_versioned_json", "sha256_file", "storage_errors",
           "write_json_atomic"]

#: errno of a write refused by the storage itself, and how a user is told
STORAGE_ERRNOS = {
    errno.ENOSPC: "the disk is full (no space left on device)",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


@contextmanager
def storage_errors(where: str | Path, doing: str, kept: str = "nothing committed was lost") -> Iterator[None]:
    """Turn an ``OSError`` that the storage caused (disk full, quota, read-only, permission) inside the
    block into a one-line :class:`StorageError`: ``<where>: <reason> while <doing>; <kept>``.

    Other exceptions (glocal's own errors included) pass unchanged. Used around every commit point.
    """
    try:
        yield
    except OSError as exc:
        if isinstance(exc, GlocalError) or exc.errno not in STORAGE_ERRNOS:
            raise
        name = f" ({exc.filename})" if exc.filename else ""
        raise StorageError(f"{where}: {STORAGE_ERRNOS[exc.errno]}{name} while {doing}; {kept}") from exc


def fsync_dir(root: Path) -> None:
    """fsync the folder ``root`` itself, making a rename or new file in it durable."""
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_after_commit(root: Path, where: str | Path, made: str) -> None:
    """:func:`fsync_dir` of ``root`` just after a commit point's rename: a full (read-only, ...) disk refusing
    it is a :class:`StorageError` that says the change is made (``made``) but may not survive a power loss,
    never that nothing changed."""
    try:
        fsync_dir(root)
    except OSError as exc:
        if isinstance(exc, GlocalError) or exc.errno not in STORAGE_ERRNOS:
            raise
        raise StorageError(f"{where}: {STORAGE_ERRNOS[exc.errno]} while making the change durable; {made}, "
                           "but it may not survive a power loss") from exc


def write_json_atomic(path: Path, obj: Any) -> None:
    """Atomically replace ``path`` by ``obj`` as JSON (indent 1): write ``<path>.tmp``, fsync it,
    ``os.replace`` it over ``path``, fsync the folder. A crash leaves the old or the new file, and
    possibly the temporary one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(obj, indent=1))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_after_commit(path.parent, path, "the change is made and in use")


#: key of a manifest's own checksum: CRC-32 of the canonical JSON of every other field
SELF_CRC = "manifest_crc32"


def json_crc32(obj: dict[str, Any]) -> int:
    """CRC-32 of the canonical JSON (sorted keys, no spaces, UTF-8) of ``obj`` without its :data:`SELF_CRC`."""
    import zlib

    rest = {k: v for k, v in obj.items() if k != SELF_CRC}
    return zlib.crc32(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode("utf-8"))


def with_self_checksum(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with its own checksum (:data:`SELF_CRC`), checked by :func:`read_versioned_json`."""
    return {k: v for k, v in obj.items() if k != SELF_CRC} | {SELF_CRC: json_crc32(obj)}


def read_versioned_json(path: Path, fmt: str, version: int, error: type[Exception],
                        version_label: str = "version") -> dict[str, Any]:
    """The JSON object in ``path`` (which must exist), after checking that its ``"format"`` is ``fmt`` and
    its ``"version"`` is at most ``version``.

    :param version_label: how the version is named in the "is newer" message.
    A manifest written with :func:`with_self_checksum` is checked against it (the field is removed from the
    result); one written before checksums is read as it is.

    :raises error: not JSON, another format, a newer version, or a checksum mismatch.
    """
    try:
        m = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})") from None
    if not isinstance(m, dict) or m.get("format") != fmt:
        found = m.get("format") if isinstance(m, dict) else type(m).__name__
        raise error(f"{path}: format is {found!r}, expected {fmt!r}")
    from glocal.io.versions import FORMATS, check_version

    if fmt in FORMATS:
        check_version(fmt, m.get("version"), path, error)
    elif int(m.get("version", 0)) > version:
        raise error(f"{path}: {version_label} {m['version']} is newer than this glocal reads ({version})")
    if SELF_CRC in m:
        recorded = m.pop(SELF_CRC)
        if recorded != json_crc32(m):
            raise error(f"{path}: checksum mismatch (the manifest was changed or damaged); run 'glocal index verify'")
    return m


class FileLock:
    """Exclusive, non-blocking advisory lock (``flock``) on ``path`` (created if missing), held until
    :meth:`release` or the end of a ``with`` block.

    :raises BlockingIOError: another process holds the lock (the file is closed again).
    :raises StorageError: the lock file cannot be created on a full (or read-only, ...) disk.
    """

    def __init__(self, path: Path) -> None:
        with storage_errors(Path(path).parent, f"creating the lock file {Path(path).name}", "nothing was changed"):
            self._fh = open(path, "a+")
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.close()
            raise

    def fileno(self) -> int:
        """The locked file's descriptor (e.g. to ``fstat`` which file is locked)."""
        return self._fh.fileno()

    def release(self) -> None:
        if not self._fh.closed:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def crc32_file(path: str | Path, block: int = 1 << 22) -> int:
    """CRC-32 (``zlib.crc32``) of the file's bytes, read ``block`` bytes (default 4 MiB) at a time."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(block):
            crc = zlib.crc32(chunk, crc)
    return crc


def file_damage(path: Path, size: int, crc: int | None) -> str | None:
    """Why the file at ``path`` does not match what a manifest recorded of it (``size`` bytes and, unless
    None, CRC-32 ``crc``): ``"missing"``, a size or a checksum mismatch; None when it matches."""
    if not path.is_file():
        return "missing"
    found_size = path.stat().st_size
    if found_size != int(size):
        return f"size {found_size} bytes, manifest says {size}"
    if crc is not None and (found := crc32_file(path)) != int(crc):
        return f"checksum mismatch (crc32 {found:08x}, manifest {int(crc):08x})"
    return None


_SHA256: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | Path, block: int = 1 << 22) -> str:
    """Hex SHA-256 of the file's bytes; remembered per (resolved path, size, modification time), so a large
    checkpoint verified at download and recorded again in an index's settings is read once per process."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA256:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(block):
                h.update(chunk)
        _SHA256[key] = h.hexdigest()
    return _SHA256[key]
