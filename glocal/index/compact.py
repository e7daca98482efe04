"""Compaction: rewrite an index without its removed images, so their bytes are given back.

``Collection.remove`` only tombstones: the removed images' features stay in ``features.glf`` (positions are
image ids) and their shortlist entries stay until a merge. :func:`compact_index` writes a new index folder
beside the old one, ``<name>.compacting``, from the live images' stored features (nothing is extracted
again; codebook, quantizer and settings are kept, so every surviving image scores as before), then swaps it
in with two renames: ``<name>`` -> ``<name>.old``, ``<name>.compacting`` -> ``<name>``, and deletes the old
folder. The writer lock (:mod:`glocal.index.writer_lock`, whose file beside the folder does not move with
it) is held from before the copy until after both renames, so no ``add`` or ``remove`` runs meanwhile, nor
opens a half-swapped folder (it is told the index is busy); readers (``glocal serve``) keep the files they have open and see the new index when they reopen.

It needs free disk space for the copy (about the live images' share of the folder). Image positions change
(they are renumbered densely); names do not. A crash before the first rename leaves
the old index untouched (the half-written ``.compacting`` folder is removed by the next compaction); a crash
between the two renames leaves both complete folders, and opening ``<name>`` says which one to rename back.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from glocal.index.asmk_stage import AsmkStage
from glocal.index.collection import Collection
from glocal.index.collection_manifest import COMPACTING_SUFFIX, write_manifest
from glocal.index.writer_lock import IndexWriterLock
from glocal.io.atomic import fsync_after_commit, fsync_dir, storage_errors
from glocal.io.feature_file import FeatureFile
from glocal.io.sources import SourceLog
from glocal.progress import Progress, as_progress

OLD_SUFFIX = ".old"
_BATCH = 64


@dataclass(frozen=True)
class CompactionReport:
    """What :func:`compact_index` did: images kept and dropped, folder bytes before and after, and the ASMK*
    segments of the version-1 layout rewritten as records (index format 2) when nothing was removed."""

    kept: int
    dropped: int
    bytes_before: int
    bytes_after: int
    upgraded: int = 0


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def compact_index(path: Path, progress: bool | Progress = False) -> CompactionReport:
    """Rewrite the index at ``path`` without its removed images (module docstring); a no-op when none are.

    :raises StorageError: the disk filled up (or refused a write) before the swap; the index is unchanged.
    """
    path = Path(path)
    with storage_errors(path, "compacting the index", "nothing committed was lost: the index is as before "
                        f"(the partial copy {path.name}{COMPACTING_SUFFIX} is removed by the next compaction)"):
        return _compact(path, progress)


def _compact(path: Path, progress: bool | Progress) -> CompactionReport:
    prog = as_progress(progress)
    # the old folder's lock is held from before the copy until after both renames, the new one's from before
    # the second rename: no writer adds to the old folder once its live images are being copied, nor opens
    # a half-swapped index (it is told the index is busy)
    lock = IndexWriterLock.take(path)
    fresh_lock = None
    try:
        before = folder_bytes(path)
        collection = Collection.open(path, progress=prog, writable=True, lock=lock)
        try:
            live = sorted(collection.live_names())
            dropped = len(collection.names) - len(live)
            old = path.with_name(path.name + OLD_SUFFIX)
            if old.exists():  # the previous compaction's old copy (its swap is done: the index opened at <name>)
                shutil.rmtree(old)
            if dropped == 0:  # nothing to drop; an index of an older glocal gets its segments' new layout
                upgraded = collection.stage.index.upgrade() if isinstance(collection.stage, AsmkStage) else 0
                return CompactionReport(len(live), 0, before, folder_bytes(path) if upgraded else before, upgraded)
            fresh = path.with_name(path.name + COMPACTING_SUFFIX)
            if fresh.exists():  # left by a compaction that crashed before its swap
                shutil.rmtree(fresh)
            fresh.mkdir()
            _copy_live(collection, live, fresh, prog)
            fresh_lock = IndexWriterLock.take_new(fresh)
            Collection.open(fresh, progress=prog, writable=True, lock=fresh_lock).close()  # indexes the copy
        finally:
            collection.close()
        fsync_dir(fresh)  # the entries of everything made in it
        os.rename(path, old)
        try:
            os.rename(fresh, path)
        except OSError:  # e.g. the disk refused it: put the index back, as it was
            os.rename(old, path)
            raise
        # both renames are durable before the old copy goes (if not, it is kept: removed by the next compaction)
        fsync_after_commit(path.parent, path, f"the index is compacted and in use ({old.name} is kept until the "
                           "next compaction)")
        shutil.rmtree(old)
    finally:
        if fresh_lock is not None:
            fresh_lock.release()
        lock.release()
    return CompactionReport(len(live), dropped, before, folder_bytes(path))


def _copy_live(collection: Collection, live: list[int], fresh: Path, progress: Progress) -> None:
    """The new folder's manifest, features and source log for the ``live`` positions, and an empty
    shortlist sharing the old one's codebook, quantizer and settings (global indexes are built on first add)."""
    write_manifest(fresh, collection.manifest)
    if isinstance(collection.stage, AsmkStage):
        collection.stage.create_empty_like(fresh).close()
    features = FeatureFile(fresh / "features.glf", writable=True)
    sources = SourceLog(fresh)
    advance = progress("copying live images", len(live))
    try:
        for start in range(0, len(live), _BATCH):
            batch = [collection.features[i] for i in live[start:start + _BATCH]]
            features.append(batch)
            origin = [(f.name, p) for f in batch if (p := collection.sources.lookup(f.name)) is not None]
            _keep_uploads(collection.root, fresh, [p for _, p in origin])
            sources.append(origin)
            advance(len(batch))
    finally:
        features.close()


def _keep_uploads(root: Path, fresh: Path, sources: list[Path]) -> None:
    """Images added through the service keep their file in ``<index>/uploads/``: the live ones move with the
    compacted index (hard-linked, or copied across file systems) under the same name, so their recorded
    source ``<index>/uploads/<file>`` is valid again once the new folder is swapped in."""
    uploads = (root / "uploads").resolve()
    for p in sources:
        if Path(p).resolve().parent != uploads or not Path(p).is_file():
            continue
        target = fresh / "uploads" / Path(p).name
        if target.exists():
            continue
        target.parent.mkdir(exist_ok=True)
        try:
            os.link(p, target)
        except OSError:
            shutil.copy2(p, target)
