"""A collection: the ``*.glx`` folder on disk, its images' features and its first stage. No search, no model.

Folder layout::

    my.glx/
      manifest.json   format, version, method and its typed options (extractor, index, search, rerank)
      features.glf    features of every database image, in database order (append-only record file)
      sources.jsonl   each image's file, for drawing matches
      ivf/            ASMK methods: the persistent inverted file (codebook included)
      global/         global methods: the global-descriptor index
      WRITER.LOCK     held by the one process that may write (:mod:`glocal.index.writer_lock`)

Appends go to ``features.glf`` first and to the first stage second, each committed (fsync); an image whose
features were written but not its first-stage entry (a crash in between) is indexed again when the
collection is next opened for writing, so nothing committed is lost. Opening never imports a model:
``index info``, ``remove`` and ``compact`` work without PyTorch.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glocal.errors import BusyIndexError, DamagedIndexError
from glocal.index.asmk_stage import AsmkStage
from glocal.index.collection_manifest import (
    manifest_options,
    read_manifest,
    write_manifest,
)
from glocal.index.global_params import IvfPqParams
from glocal.index.global_stage import GlobalStage, choose_kind, global_vector
from glocal.index.writer_lock import IndexWriterLock
from glocal.io.atomic import storage_errors
from glocal.io.feature_file import FeatureFile
from glocal.io.sources import SourceLog
from glocal.methods.spec import MethodOptions, MethodSpec
from glocal.methods.stages import AsmkIndexOptions
from glocal.progress import Progress, as_progress, no_progress
from glocal.records import ImageFeatures

FirstStage = AsmkStage | GlobalStage
#: images given to the first stage per commit
INDEX_BATCH = 64
#: what a user is told is safe when a write fails for lack of space or permission
_KEPT = ("nothing committed was lost (the images committed before stay in the index; the rest are indexed "
         "when the index is next opened for writing or added again)")
#: vectors drawn (evenly spaced) to train an IVF-PQ first stage, or its parameters' sample_size when larger
IVFPQ_TRAINING_VECTORS = 100_000


def open_first_stage(root: Path, options: MethodOptions, writable: bool) -> FirstStage:
    if isinstance(options.index, AsmkIndexOptions):
        return AsmkStage.open(root, options.index, writable=writable)
    return GlobalStage.open(root, options.index, writable=writable)


class Collection:
    """The images of one index folder: features, names, sources, removals and the first stage."""

    def __init__(self, root: Path, manifest: dict[str, Any], spec: MethodSpec, options: MethodOptions,
                 stage: FirstStage, writable: bool, writer: IndexWriterLock | None, progress: Progress) -> None:
        self.root = Path(root)
        self.manifest = manifest
        self.spec = spec
        self.options = options
        self.stage = stage
        self.writable = writable
        self._writer = writer
        self._progress = progress
        self.features = FeatureFile(self.root / "features.glf", writable=writable)
        self.sources = SourceLog(self.root)

    # -- opening ---------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path, writable: bool = False, progress: bool | Progress = False,
             lock: IndexWriterLock | None = None) -> Collection:
        """Open the index folder at ``path``; ``writable`` takes the writer lock (one writer, any readers) and
        indexes any committed features missing from the first stage.

        :param lock: (``writable``) the writer lock of ``path``, taken by the caller, who keeps it after
            :meth:`close` (compaction holds it across its folder swap).
        :raises DamagedIndexError: missing, not an index, damaged, or an unreadable version.
        :raises BusyIndexError: ``writable`` while another process writes.
        """
        path = Path(path)
        # a writer locks before it reads: what it read earlier may be a folder that a compaction swapped away
        writer = IndexWriterLock.take(path) if writable and lock is None else None
        try:
            manifest = read_manifest(path)
            spec, options = manifest_options(manifest, path)
        except BaseException:
            if writer is not None:
                writer.release()
            raise
        stage = None
        try:
            stage = open_first_stage(path, options, writable)
            collection = cls(path, manifest, spec, options, stage, writable, writer, as_progress(progress))
        except BaseException:
            if stage is not None:
                stage.close()
            if writer is not None:
                writer.release()
            raise
        try:
            if writable and manifest.pop("upgraded_from", None):  # a version-2 index, now written as 3
                write_manifest(path, manifest)
            collection.index_pending()
        except BaseException:
            collection.close()
            raise
        return collection

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------------------
    @property
    def method(self) -> str:
        return self.spec.name

    @property
    def names(self) -> list[str]:
        """Names of the indexed images by position, removed ones included."""
        return self.features.names[: self.stage.count]

    def __len__(self) -> int:
        """Searchable images (removed ones excluded)."""
        return len(self.stage)

    def live_names(self) -> dict[int, str]:
        """Position -> name of every searchable image (removed ones excluded)."""
        dead = self.stage.removed()
        return {i: n for i, n in enumerate(self.names) if i >= len(dead) or not dead[i]}

    def settings(self) -> dict[str, Any]:
        """Everything needed to reproduce a result obtained with this index (JSON-able)."""
        out: dict[str, Any] = {"method": self.method, "images": len(self),
                               "max_side": getattr(self.options.extractor, "max_side", None),
                               "first_stage": self.stage.settings}
        out |= self.options.to_dict()  # extractor, index, search, rerank
        if "codebook" in self.manifest:
            out["codebook"] = self.manifest["codebook"]
        return out

    def info(self) -> dict[str, Any]:
        """What ``glocal index info`` prints: images, removed images, first-stage sizes, bytes per image."""
        sizes = {p.relative_to(self.root).as_posix(): p.stat().st_size for p in self.root.rglob("*") if p.is_file()}
        total = sum(sizes.values())
        n = max(len(self), 1)
        out = {"images": len(self), "removed_images": len(self.names) - len(self), "method": self.method}
        codebook = self.manifest.get("codebook", {})
        if "global_index" in self.manifest:  # index=auto: what the first fill chose
            choice = self.manifest["global_index"]
            out["global_index"] = (f"{choice['chosen']} (auto: {choice['images_at_choice']:,} images x "
                                   f"{choice['dim']}-D at the first build; ivfpq from "
                                   f"{choice['auto_ivfpq_bytes']:,} bytes of float32 vectors)")
        if "size" in codebook:  # ASMK: the words trained, and the words asked for when fewer were possible
            out["codebook_words"] = codebook["size"]
            out["codebook_words_requested"] = codebook.get("requested_size", codebook["size"])
        return out | {"shortlist": self.stage.stats(), "features_bytes_per_image": sizes.get("features.glf", 0) / n,
                      "total_bytes": total, "total_bytes_per_image": total / n}

    # -- writing ---------------------------------------------------------------------------------------
    def _require_writable(self) -> None:
        if not self.writable:
            raise BusyIndexError(f"{self.root}: opened read-only; open it writable to change it")

    def append(self, batch: Sequence[ImageFeatures], sources: Iterable[tuple[str, Path]] = (),
               shadow: bool = True) -> None:
        """Commit features of new images (not yet searchable: :meth:`index_pending` indexes them).

        :param shadow: a name already in the file shadows the older record (a re-added, removed image).
        """
        self._require_writable()
        with storage_errors(self.root, "adding images", _KEPT):
            self.sources.append(sources)  # first: a source line for an image never committed is harmless
            self.features.append(list(batch), shadow=shadow)  # the commit point

    def index_pending(self, progress: Progress | None = None) -> int:
        """Give the first stage the images whose features are committed but not indexed; returns how many.
        A reader leaves them alone (it serves what the first stage has committed)."""
        done = self.stage.count
        if done > len(self.features):
            raise DamagedIndexError(f"{self.root}: the first stage holds {done} images but features.glf only "
                                    f"{len(self.features)}; the index is damaged, rebuild it")
        missing = range(done, len(self.features))
        if not missing or not self.writable:
            return 0
        choosing = isinstance(self.stage, GlobalStage) and self.stage.index is None
        dim = len(global_vector(self.features[missing.start])) if choosing else 0
        if choosing and choose_kind(self.options.index.index, len(missing), dim) == "ivfpq":
            wanted = max(IVFPQ_TRAINING_VECTORS, IvfPqParams.for_size(len(missing), dim).sample_size)
            step = max(1, len(missing) // wanted)
            sample = np.stack([global_vector(self.features[i]) for i in missing[::step]])
            self.stage.prepare(sample, expected_size=len(missing))
        advance = (progress or self._progress)("indexing", len(missing))
        with storage_errors(self.root, "indexing images", _KEPT):
            for start in range(missing.start, missing.stop, INDEX_BATCH):
                batch = [self.features[i] for i in range(start, min(start + INDEX_BATCH, missing.stop))]
                self.stage.add(batch)
                advance(len(batch))
            if choosing and self.options.index.index == "auto":
                self._record_choice(len(missing), dim)
        return len(missing)

    def _record_choice(self, images: int, dim: int) -> None:
        """``index=auto``: write into the manifest which global index the first fill chose, and why."""
        from glocal.methods.stages import AUTO_IVFPQ_BYTES

        self.manifest["global_index"] = {"requested": "auto", "chosen": self.stage.index.kind,  # type: ignore[union-attr]
                                         "images_at_choice": images, "dim": dim, "auto_ivfpq_bytes": AUTO_IVFPQ_BYTES}
        write_manifest(self.root, self.manifest)

    def remove(self, names: Sequence[str]) -> list[str]:
        """Remove images by name from search results (committed at once); returns the names not found.

        Their features stay in ``features.glf`` (positions are ids) until ``glocal index compact``; the name
        can be added again.
        """
        self._require_writable()
        known = {n: i for i, n in self.live_names().items()}
        with storage_errors(self.root, "removing images", "nothing was removed; nothing committed was lost"):
            self.stage.remove([known[n] for n in names if n in known])
        return [n for n in names if n not in known]

    def close(self) -> None:
        self.features.close()
        self.stage.close()
        if self._writer is not None:
            self._writer.release()
            self._writer = None


__all__ = ["Collection", "FirstStage", "INDEX_BATCH", "no_progress", "open_first_stage"]
