"""Local feature store for re-ranking: compact descriptors + keypoints, one record per image, read lazily.

Re-ranking (DELG, Cao et al. ECCV 2020) reads the local features of the ~100 shortlisted images only, so
the store is a :class:`glocal.io.feature_file.RecordFile` (append-only, checksummed, crash-safe) with one
record per image, read one record at a time. Two modes, fixed per store and written in every record's
attrs (``"mode"``):

- ``"float16"``: descriptors stored as float16 (2 bytes per dimension) and returned as float32;
- ``"binary"``: DELG*: descriptors binarized by sign, ``np.packbits(d > 0, axis=1)`` (1 bit per
  dimension, 16 bytes for 128-D), returned as packed uint8 codes; matched by Hamming distance in
  :func:`glocal.rerank.matching.match_descriptors` (DELG* threshold: L2 1.1 converted with
  ``hamming_threshold_from_l2``).

Keypoints (float32 x, y), scales and strengths (float16: only used for display and ordering) are stored
with the descriptors. Global descriptors are not: they live in the global index.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from glocal.io.feature_file import FeatureFileError, ImageRecords, RecordFile, RecordView
from glocal.records import ImageFeatures

__all__ = ["LocalStore", "LocalStoreStats", "LocalView", "Mode", "binarize", "encode_features"]

Mode = Literal["float16", "binary"]
MODES: tuple[str, ...] = ("float16", "binary")


def binarize(descriptors: npt.NDArray) -> npt.NDArray[np.uint8]:
    """DELG* sign codes: ``np.packbits(d > 0, axis=1)``, (N, d) float -> (N, ceil(d / 8)) uint8."""
    d = np.asarray(descriptors)
    if d.ndim != 2:
        raise ValueError(f"descriptors must be (N, d), got shape {d.shape}")
    return np.packbits(d > 0, axis=1)


def _stored_descriptors(features: ImageFeatures, mode: str) -> npt.NDArray:
    """Descriptors in their stored form: float16, or packed sign codes (packed input kept as is)."""
    d = features.descriptors
    if d.dtype != np.uint8:
        return binarize(d) if mode == "binary" else np.asarray(d, np.float16)
    if mode != "binary":
        raise ValueError(f"{features.name}: packed binary descriptors cannot be stored in float16 mode")
    return d


def encode_features(features: ImageFeatures, mode: Mode) -> ImageFeatures:
    """The features as a store of this ``mode`` returns them: float32 descriptors rounded through float16,
    or packed sign codes (already packed uint8 input is kept). Apply it to a query so that it is compared
    with database images on equal terms."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    desc = _stored_descriptors(features, mode)
    return ImageFeatures(
        name=features.name,
        image_size=features.image_size,
        descriptors=desc if mode == "binary" else desc.astype(np.float32),
        keypoints=np.asarray(features.keypoints, np.float32),
        scales=np.asarray(features.scales, np.float32),
        strengths=np.asarray(features.strengths, np.float16).astype(np.float32),
    )


@dataclass(frozen=True)
class LocalStoreStats:
    """Size of a store: ``bytes_per_image`` = file bytes / images; ``bytes_per_feature`` = descriptor +
    keypoint (8) + scale (4) + strength (2) bytes of one stored feature; ``features_per_image`` = mean N."""

    mode: str
    images: int
    features: int
    features_per_image: float
    bytes_per_feature: int
    bytes_per_image: float
    total_bytes: int

    def as_dict(self) -> dict:
        return asdict(self)


class LocalStore(ImageRecords):
    """Local features of a collection, one :class:`RecordFile` record per image.

    :param path: the store file (created when ``writable`` and missing).
    :param mode: ``"float16"`` or ``"binary"``; for an existing non-empty store, None reads it from the
        records and a different value is an error. A new store defaults to ``"float16"``.
    :param writable: allow :meth:`add`.

    Items (``store[i]``, :meth:`get`, iteration) have float32 descriptors (float16 mode) or packed uint8
    codes (binary).
    """

    def __init__(self, path: str | Path, mode: Mode | None = None, *, writable: bool = False) -> None:
        if mode is not None and mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.records = RecordFile(path, writable=writable)
        found = {r.attrs.get("mode") for r in self.records.records}
        stored = next(iter(found)) if len(found) == 1 else None
        problem = None
        if len(found) > 1 or (found and stored not in MODES):
            problem = f"records have modes {sorted(map(str, found))}, expected one of {MODES}"
        elif stored is not None and mode is not None and stored != mode:
            problem = f"store holds {stored!r} descriptors, opened as {mode!r}"
        if problem:
            self.records.close()
            raise FeatureFileError(f"{self.path}: {problem}")
        self.mode: Mode = stored or mode or "float16"  # type: ignore[assignment]
        self.dim: int | None = int(self.records.records[0].attrs["dim"]) if len(self.records) else None

    def add(self, features: ImageFeatures | Sequence[ImageFeatures]) -> list[int]:
        """Append images (one fsync for all); returns their positions. Names must be new."""
        items = [features] if isinstance(features, ImageFeatures) else list(features)
        batch = []
        for f in items:
            dim = 8 * f.descriptors.shape[1] if f.descriptors.dtype == np.uint8 else f.descriptors.shape[1]
            if self.dim is not None and dim != self.dim and f.num_features:
                raise ValueError(f"{self.path}: {f.name} has {dim}-D descriptors, the store holds {self.dim}-D")
            if f.num_features and not np.isfinite(np.asarray(f.keypoints)).all():
                raise ValueError(f"{self.path}: {f.name} has NaN or infinite keypoints")
            try:
                desc = _stored_descriptors(f, self.mode)
            except ValueError as e:
                raise ValueError(f"{self.path}: {e}") from None
            arrays = {
                "descriptors": desc,
                "keypoints": np.asarray(f.keypoints, np.float32),
                "scales": np.asarray(f.scales, np.float32),
                "strengths": np.asarray(f.strengths, np.float16),
            }
            attrs = {"mode": self.mode, "dim": int(dim), "image_size": [int(v) for v in f.image_size]}
            batch.append((f.name, arrays, attrs))
            if self.dim is None and f.num_features:
                self.dim = int(dim)
        return self.records.append_many(batch)

    def __getitem__(self, i: int) -> ImageFeatures:
        """Read the record at position ``i`` (checksum verified)."""
        name, attrs, arrays = self.records.read(i)
        desc = arrays["descriptors"]
        if self.mode == "float16":
            desc = desc.astype(np.float32)
        h, w = attrs["image_size"]
        return ImageFeatures(
            name=name,
            image_size=(int(h), int(w)),
            descriptors=desc,
            keypoints=arrays["keypoints"],
            scales=arrays["scales"],
            strengths=arrays["strengths"].astype(np.float32),
        )

    def view(self, names: Sequence[str]) -> LocalView:
        """A lazy sequence of these images' features: each item is read when indexed (for
        ``glocal.rerank.shortlist.rerank(query, store.view(names), scores)``). Unknown names fail here."""
        return LocalView(self, [self.records.index_of(n) for n in names])

    def encode(self, features: ImageFeatures) -> ImageFeatures:
        """``features`` as this store would return them (for the query side); see :func:`encode_features`."""
        return encode_features(features, self.mode)

    def stats(self) -> LocalStoreStats:
        """Images, features and bytes per image (file size / images) without reading any array."""
        counts = [int(r.arrays["descriptors"]["shape"][0]) for r in self.records.records]
        n = len(counts)
        per_desc = 0 if self.dim is None else (self.dim + 7) // 8 if self.mode == "binary" else 2 * self.dim
        total = self.path.stat().st_size
        return LocalStoreStats(self.mode, n, sum(counts), sum(counts) / max(n, 1), per_desc + 8 + 4 + 2,
                               total / max(n, 1), total)

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Lazy view of stored images (kept under this name for callers of the local store).
LocalView = RecordView
