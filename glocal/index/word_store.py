"""Per-feature visual words and geometry of an ASMK index: what fast spatial verification reads.

``<index>/words.glf`` is a checksummed record file (:mod:`glocal.io.feature_file`, the format of
``features.glf``), one record per indexed image, named by its position, holding for each local feature:

* ``words`` (N,) uint16 (int32 above 65,536 words): its nearest visual word;
* ``signs`` (N, d / 8) uint8: the sign bits of its residual to that word, ``packbits(x - q_c > 0)``;
* ``keypoints`` (N, 2) float32, ``scales`` (N,) float32 and, when the extractor gives them,
  ``orientations`` (N,) float32.

That is 34 bytes per 128-D feature (68 kB for 2,000) against 0.5-1 MB of descriptors in ``features.glf``, so
verifying a shortlist of 100 reads a few MB and no descriptor. The records are written by the ASMK stage
when it indexes an image (before the inverted file commits it: an image indexed again after a crash gets a
newer record of the same name, which shadows the old one), so compaction and repair, which re-index the
live images, rebuild the file, and :func:`rebuild` re-makes it from ``features.glf`` (``glocal index verify
--repair`` when only this file is damaged). Indexes built before this file existed have none: their search
falls back to descriptor matching.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from glocal.index.asmk import Quantizer, assign_many
from glocal.io.atomic import fsync_dir
from glocal.io.feature_file import RecordFile
from glocal.records import ImageFeatures

FILE = "words.glf"


def residual_signs(descriptors: npt.NDArray, words: npt.NDArray, centroids: npt.NDArray) -> npt.NDArray[np.uint8]:
    """Packed sign bits of ``descriptors - centroids[words]``: (N, d / 8) for (N,) words, (N, k, d / 8) for
    (N, k) words."""
    x = np.asarray(descriptors, np.float32)
    w = np.asarray(words, np.int64)
    c = np.asarray(centroids, np.float32)
    if w.ndim == 1:
        return np.packbits(x > c[w], axis=-1)
    return np.packbits(x[:, None, :] > c[w], axis=-1)


class WordStore:
    """The ``words.glf`` of one index (module docstring)."""

    def __init__(self, records: RecordFile, vocabulary: int) -> None:
        self.records = records
        self.word_dtype = np.uint16 if vocabulary <= 65536 else np.int32

    @classmethod
    def open(cls, root: Path, vocabulary: int, writable: bool = False, create: bool = False) -> WordStore | None:
        """The store of the index at ``root``; None when it has none (an older index) unless ``create``."""
        path = Path(root) / FILE
        if not path.exists() and not create:
            return None
        return cls(RecordFile(path, writable=writable or create), vocabulary)

    def __len__(self) -> int:
        return len(self.records)

    def has(self, position: int) -> bool:
        return str(position) in self.records

    def append(self, first_position: int, features: Sequence[ImageFeatures], nearest: Sequence[npt.NDArray],
               centroids: npt.NDArray) -> None:
        """Records for the images at ``first_position``, ``first_position + 1``, ... (``nearest``: their
        descriptors' words, first column used), written with one fsync."""
        items = []
        for i, (f, w) in enumerate(zip(features, nearest)):
            w = np.asarray(w, np.int64)
            words = w[:, 0] if w.ndim == 2 else w.reshape(-1)
            arrays = {"words": words.astype(self.word_dtype),
                      "signs": residual_signs(f.descriptors, words, centroids),
                      "keypoints": np.asarray(f.keypoints, np.float32), "scales": np.asarray(f.scales, np.float32)}
            if f.orientations is not None:
                arrays["orientations"] = np.asarray(f.orientations, np.float32)
            items.append((str(first_position + i), arrays, None))
        self.records.append_many(items, shadow=True)

    def read(self, position: int) -> dict[str, npt.NDArray]:
        """The arrays of the image at ``position`` (CRC-checked); KeyError when it has no record."""
        return self.records.read(self.records.index_of(str(position)))[2]

    def check(self) -> list[tuple[int, str, str]]:
        return self.records.check()

    def close(self) -> None:
        self.records.close()


def rebuild(root: Path, features: Sequence[ImageFeatures], count: int, quantizer: Quantizer,
            centroids: npt.NDArray, batch: int = 64) -> None:
    """Write ``root/words.glf`` anew from the first ``count`` stored images (positions 0 .. count - 1) and swap
    it in atomically; the caller holds the index's writer lock."""
    root = Path(root)
    tmp = root / (FILE + ".rebuilding")
    tmp.unlink(missing_ok=True)
    store = WordStore(RecordFile(tmp, writable=True), len(centroids))
    try:
        for start in range(0, count, batch):
            images = [features[i] for i in range(start, min(start + batch, count))]
            store.append(start, images, assign_many(quantizer, [f.descriptors for f in images], k=1), centroids)
    finally:
        store.close()
    tmp.replace(root / FILE)
    fsync_dir(root)
