"""Regions of database images (Teichmann et al., "Detect-to-Retrieve", CVPR 2019, section 4).

* Regional search (eq. 3-4): every region r of a database image (the full image is always region 1) is
  stored as its own item, and the image scores max_r K(X, Y^(r)) (eq. 3) or the mean over regions (eq. 4).
* R-ASMK (eq. 8-9): one item per image. For word c,
  V_R(c) = (1/R) sum_r gamma(Y^(r)) V(Y_c^(r)) with gamma(Y^(r)) = 1 / ||V(Y^(r))||, the norm of the whole
  aggregated vector of region r (all words; the VLAD normalisation, as in the official DELF code), then
  V^_R(c) = V_R(c) / ||V_R(c)|| is matched with the ASMK selectivity (R-ASMK*: its sign bits). The
  representation has the size of plain ASMK; regional aggregation is applied on the database side only.

A local feature belongs to a region when its keypoint lies inside the box, borders included.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from glocal.index.asmk import AggregatedImage, Quantizer, empty_image, encode, residual_sums
from glocal.index.codebook import Codebook
from glocal.records import ImageFeatures

POOLINGS = ("max", "mean")


def region_membership(
    keypoints: npt.NDArray, boxes: npt.NDArray | None, include_full_image: bool = True
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], int]:
    """(descriptor rows, region ids, number of regions R): which descriptors fall in which region.

    :param keypoints: (N, 2) x, y.
    :param boxes: (B, 4) x1, y1, x2, y2 (or None). With ``include_full_image`` region 0 is the full image
        and box b is region b + 1, so R = B + 1.
    """
    kp = np.asarray(keypoints, dtype=np.float32).reshape(-1, 2)
    b = np.zeros((0, 4), np.float32) if boxes is None else np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    n = len(kp)
    inside = ((kp[None, :, 0] >= b[:, None, 0]) & (kp[None, :, 0] <= b[:, None, 2])
              & (kp[None, :, 1] >= b[:, None, 1]) & (kp[None, :, 1] <= b[:, None, 3]))  # (B, N)
    if include_full_image:
        inside = np.concatenate([np.ones((1, n), bool), inside])
    regions, rows = np.nonzero(inside)
    return rows.astype(np.int64), regions.astype(np.int64), int(inside.shape[0])


def _check(descriptors: npt.NDArray, keypoints: npt.NDArray) -> npt.NDArray[np.float32]:
    x = np.asarray(descriptors, dtype=np.float32)
    if len(np.asarray(keypoints).reshape(-1, 2)) != len(x):
        raise ValueError(f"{len(x)} descriptors but {len(np.asarray(keypoints).reshape(-1, 2))} keypoints")
    return x


def aggregate_regions(
    descriptors: npt.NDArray, keypoints: npt.NDArray, boxes: npt.NDArray | None, codebook: Codebook,
    assignments: int = 1, binary: bool = True, quantizer: Quantizer | None = None, include_full_image: bool = True,
    nearest: npt.NDArray | None = None,
) -> list[AggregatedImage]:
    """One ASMK representation per region (regional search, D2R eq. 3-4), full image first.

    Descriptors are quantised once; each region aggregates the residuals of the features inside it.
    """
    x = _check(descriptors, keypoints)
    rows, regions, r_total = region_membership(keypoints, boxes, include_full_image)
    if len(x) == 0:
        return [empty_image(codebook.dim, binary) for _ in range(r_total)]
    if nearest is None:  # else: assigned already (glocal.index.asmk.assign_many)
        nearest = (quantizer or codebook).assign(x, k=assignments)
    g, w, sums = residual_sums(x, nearest, codebook.centroids, rows, regions)
    bounds = np.searchsorted(g, np.arange(r_total + 1))
    return [encode(w[bounds[r]:bounds[r + 1]], sums[bounds[r]:bounds[r + 1]], binary) for r in range(r_total)]


def aggregate_rasmk(
    descriptors: npt.NDArray, keypoints: npt.NDArray, boxes: npt.NDArray | None, codebook: Codebook,
    assignments: int = 1, binary: bool = True, quantizer: Quantizer | None = None, include_full_image: bool = True,
    nearest: npt.NDArray | None = None,
) -> AggregatedImage:
    """R-ASMK (binary: R-ASMK*) representation of a database image, D2R eq. 8-9 (see the module docstring).

    With no boxes (R = 1) it equals plain ASMK :func:`glocal.index.asmk.aggregate`.
    """
    x = _check(descriptors, keypoints)
    rows, regions, r_total = region_membership(keypoints, boxes, include_full_image)
    if len(x) == 0 or len(rows) == 0:
        return empty_image(codebook.dim, binary)
    if nearest is None:  # else: assigned already (glocal.index.asmk.assign_many)
        nearest = (quantizer or codebook).assign(x, k=assignments)
    g, w, sums = residual_sums(x, nearest, codebook.centroids, rows, regions)
    # gamma(Y^(r)) = 1 / ||V(Y^(r))||: norm over all words of region r (eq. 8)
    region_norm = np.sqrt(np.bincount(g, weights=np.einsum("ij,ij->i", sums, sums), minlength=r_total))
    scale = np.divide(1.0, region_norm, out=np.zeros_like(region_norm), where=region_norm > 0)
    weighted = sums * scale[g, None].astype(np.float32)
    order = np.argsort(w, kind="stable")
    w_sorted = w[order]
    starts = np.flatnonzero(np.concatenate([[True], w_sorted[1:] != w_sorted[:-1]]))
    v_r = np.add.reduceat(weighted[order], starts, axis=0) / np.float32(r_total)
    return encode(w_sorted[starts], v_r, binary)


def feature_boxes(features: ImageFeatures) -> npt.NDArray[np.float32]:
    """The detector boxes of an :class:`ImageFeatures` ((0, 4) when it has none)."""
    if features.regions is None:
        return np.zeros((0, 4), np.float32)
    return np.asarray(features.regions, np.float32).reshape(-1, 4)


def pool(
    item_scores: npt.NDArray, first_item: npt.NDArray[np.int64], how: str = "max"
) -> npt.NDArray[np.float64]:
    """Image scores from item (region) scores: max (D2R eq. 3) or mean (eq. 4) over each image's items.

    :param first_item: (n_images + 1,) item boundaries: image i owns items ``first_item[i]:first_item[i + 1]``
        (every image has at least one item, its full-image region).
    """
    if how not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {how!r}")
    s = np.asarray(item_scores, dtype=np.float64)
    starts = np.asarray(first_item[:-1], np.int64)
    counts = np.diff(first_item)
    if len(starts) == 0:
        return np.zeros(0, np.float64)
    if np.any(counts <= 0):
        raise ValueError("every image must own at least one item (its full-image region)")
    if how == "max":
        return np.maximum.reduceat(s, starts)
    return np.add.reduceat(s, starts) / counts


def split_items(images: Sequence[AggregatedImage | Sequence[AggregatedImage]]) -> tuple[list[AggregatedImage], list[int]]:
    """Flatten images given as one item each, or as a sequence of region items, into (items, items per image)."""
    items: list[AggregatedImage] = []
    per_image: list[int] = []
    for im in images:
        if isinstance(im, AggregatedImage):
            items.append(im)
            per_image.append(1)
        else:
            regions = list(im)
            if not regions:
                raise ValueError("an image given as regions needs at least one region (the full image)")
            items.extend(regions)
            per_image.append(len(regions))
    return items, per_image
