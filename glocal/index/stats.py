"""Size accounting of an ASMK index (what ``glocal index info`` shows).

FIRe reports the memory of an ASMK* database as the number of non-empty visual words per image |C(x)|
(383 on R1M, HOW: 469) times the size of one entry (a d-bit code + the image id; the word id is implied by
the posting list it is in).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from glocal.index.asmk import AsmkIndex
from glocal.index.inverted_file import InvertedFile


@dataclass(frozen=True)
class IndexStats:
    """:param images: images searchable (removed ones excluded).
    :param removed: images removed but still stored until compaction.
    :param items: stored items (images, or regions in regional search).
    :param entries: stored (item, non-empty word) pairs.
    :param words_per_image: mean non-empty words per image |C(x)| (summed over its regions).
    :param bytes_per_entry: code + item id.
    :param bytes_per_image: everything stored except the codebook, divided by the images stored.
    :param index_bytes: everything stored except the codebook; ``codebook_bytes``: the codebook file.
    """

    kind: str
    images: int
    removed: int
    items: int
    entries: int
    segments: int
    words_per_image: float
    bytes_per_entry: int
    bytes_per_image: float
    index_bytes: int
    codebook_bytes: int
    codebook_size: int
    dim: int

    def as_dict(self) -> dict:
        return asdict(self)


def _kind(binary: bool, aggregation: str = "asmk") -> str:
    base = {"asmk": "ASMK", "r-asmk": "R-ASMK", "regions": "regional ASMK"}[aggregation]
    return base + ("*" if binary else "")


def index_stats(index: InvertedFile | AsmkIndex) -> IndexStats:
    """Images, non-empty words per image (mean |C(x)|), bytes per image and total size of an index."""
    if isinstance(index, AsmkIndex):
        wpi = index.words_per_image
        code = index._codes.shape[1] * index._codes.dtype.itemsize
        entries = int(len(index._images))
        total = entries * (code + 4) + index._offsets.nbytes + index._gamma.nbytes
        n = len(index)
        return IndexStats(_kind(index.binary), n, 0, n, entries, 1, float(wpi.mean()) if n else 0.0, code + 4,
                          total / max(n, 1), total, index.codebook.centroids.nbytes, index.codebook.size,
                          index.codebook.dim)
    segs = index.segments
    entries = sum(int(s.entry["entries"]) for s in segs)
    root = index.root
    files = [s.entry["file"] for s in segs]
    t = index._manifest.get("tombstones")
    if t:
        files.append(t["file"])
    total = sum((root / f).stat().st_size for f in files)
    cb = int(index._manifest["codebook"]["bytes"])
    live = len(index)
    removed = index.removed
    if len(segs):
        item_image = np.concatenate([np.asarray(s.item_image) for s in segs]).astype(np.int64)
        item_size = np.concatenate([np.asarray(s.item_size) for s in segs]).astype(np.float64)
        per_image = np.bincount(item_image, weights=item_size, minlength=index.n_images)[~removed]
    else:
        per_image = np.zeros(0)
    width = index.codebook.dim // 8 if index.settings.binary else 4 * index.codebook.dim
    return IndexStats(_kind(index.settings.binary, index.settings.aggregation), live, int(removed.sum()),
                      index.n_items, entries, len(segs), float(per_image.mean()) if live else 0.0, width + 4,
                      total / max(index.n_images, 1), total, cb, index.codebook.size, index.codebook.dim)
