"""Keeping the service's view of its index honest: refuse a damaged index at startup, notice changes that
another process made on disk, and keep a copy of each image added through the service.

* :func:`refuse_damaged`: :func:`glocal.index.verify.verify_index` (reads every checksummed file once);
  damage raises :class:`~glocal.errors.DamagedIndexError` with one line naming each damaged file.
* :func:`index_fingerprint`: a few ``stat`` calls (no reads) that change whenever ``glocal index add``,
  ``remove`` or ``compact`` commits: the folder's inode (compaction swaps the whole folder), and inode, size
  and mtime of ``manifest.json``, ``features.glf`` (appended to by ``add``) and the first stage's
  ``ivf/MANIFEST.json`` / ``global/MANIFEST.json`` (rewritten atomically, so a new inode, by every commit).
  A read-only service compares it before each request that takes the searcher and reopens the index when it
  differs.
* :func:`keep_upload`: an uploaded image is kept as ``<index>/uploads/<sha256 of its bytes><.ext>`` (written to a
  temporary name, fsync'ed, renamed, folder fsync'ed) before its features are committed, and that file is
  recorded as its source, so ``glocal search --draw`` can draw it later. Identical uploads share one file.
  Removing an image leaves its upload in place.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from glocal.errors import DamagedIndexError
from glocal.io.atomic import fsync_dir

UPLOADS = "uploads"
_WATCHED = ("manifest.json", "features.glf", "ivf/MANIFEST.json", "global/MANIFEST.json")
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
_FORMAT_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif",
                  "PPM": ".ppm"}


def refuse_damaged(path: Path) -> None:
    """Raise :class:`DamagedIndexError` (one line, each damaged file named) unless ``path`` verifies clean."""
    from glocal.index.verify import verify_index

    report = verify_index(path)
    if not report.ok:
        raise DamagedIndexError(f"refusing to serve a damaged index: {report.summary()} (see 'glocal index verify "
                                f"{path}' and 'glocal index repair')")


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def index_fingerprint(path: Path) -> tuple:
    """What changes on disk whenever another process commits a change to the index at ``path`` (cheap)."""
    root = _stat(path)
    return (root and root[0],) + tuple(_stat(path / name) for name in _WATCHED)


def _suffix(filename: str | None, src: Path) -> str:
    suffix = Path(filename or "").suffix.lower()
    if suffix in _IMAGE_SUFFIXES:
        return suffix
    try:
        from PIL import Image

        with Image.open(src) as img:
            return _FORMAT_SUFFIX.get(img.format or "", ".img")
    except Exception:  # noqa: BLE001 - not an image: the loader refuses it with its own reason
        return ".img"


def keep_upload(index_root: Path, src: Path, filename: str | None) -> tuple[Path, bool]:
    """Copy the upload at ``src`` to ``<index_root>/uploads/<sha256><.ext>`` durably; returns the kept path and
    whether this call created it (False when identical bytes were kept before)."""
    digest = hashlib.sha256()
    with open(src, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    folder = Path(index_root) / UPLOADS
    target = folder / f"{digest.hexdigest()}{_suffix(filename, src)}"
    if target.is_file() and target.stat().st_size == src.stat().st_size:
        return target, False
    new_folder = not folder.is_dir()
    folder.mkdir(exist_ok=True)
    if new_folder:
        fsync_dir(folder.parent)
    tmp = folder / f".{target.name}.{os.getpid()}.tmp"
    try:
        with open(src, "rb") as f_in, open(tmp, "wb") as f_out:
            shutil.copyfileobj(f_in, f_out, 1 << 20)
            f_out.flush()
            os.fsync(f_out.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(folder)
    return target, True
