"""The final order of a verified shortlist by spatially distinct inliers, optionally plus the first-stage score.

An inlier count rewards bursts: a repeated texture (a row of alike windows, tracery, brickwork) on an
unrelated building can give many inliers within a few pixels of each other, because every copy of the
pattern offers a correspondence that agrees with the same local map. Counting each cell of a grid once is a
spatial non-maximum suppression of the inliers: with the inlier correspondences (x_q,i, x_db,i) and a cell
size g (original pixels, like the verification threshold),

    d = min( |{ floor(x_q,i / g) }|,  |{ floor(x_db,i / g) }| ),

the number of distinct occupied cells on the side where the inliers are more crowded (g = 0: d = the inlier
count). The order key of a verified candidate adds a share of its first-stage score s, relative to the best
first-stage score s_max of the shortlist,

    key = d + lambda * s / s_max,

so with lambda > 0 a much stronger first-stage match can overtake a candidate with a few more distinct
inliers (lambda = 0: the first-stage score only breaks ties, DELG's rule). The yes/no decision
(``Reranked.is_match``) and ``verified`` stay on the raw inlier count: the decision threshold is calibrated
on it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from glocal.rerank.shortlist import Reranked, final_order

__all__ = ["distinct_counts", "distinct_inliers", "reorder"]


def distinct_inliers(matches: npt.ArrayLike, cell_px: float) -> int:
    """``d`` of the module docstring for one candidate's (K, 4) inlier matches x_q, y_q, x_db, y_db."""
    return int(distinct_counts([np.asarray(matches, np.float64).reshape(-1, 4)], cell_px)[0])


def distinct_counts(matches: Sequence[npt.NDArray], cell_px: float) -> npt.NDArray[np.int64]:
    """``d`` of every candidate at once (one ``np.unique`` over all the shortlist's inliers)."""
    sizes = np.array([len(m) for m in matches], np.int64)
    if cell_px <= 0 or sizes.sum() == 0:
        return sizes
    rows = np.concatenate([np.asarray(m, np.float64).reshape(-1, 4) for m in matches])
    owner = np.repeat(np.arange(len(matches), dtype=np.int64), sizes)

    def occupied(xy: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        cells = np.floor(xy / cell_px).astype(np.int64)
        cells -= cells.min(axis=0)
        width = cells.max(axis=0) + 1
        if float(len(matches)) * float(width[0]) * float(width[1]) >= 2.0 ** 62:  # tiny cells: no int64 key
            distinct = np.unique(np.column_stack([owner, cells]), axis=0)
            return np.bincount(distinct[:, 0], minlength=len(matches)).astype(np.int64)
        key = (owner * width[0] + cells[:, 0]) * width[1] + cells[:, 1]
        return np.bincount(np.unique(key) // (width[0] * width[1]), minlength=len(matches)).astype(np.int64)

    return np.minimum(occupied(rows[:, :2]), occupied(rows[:, 2:]))


def reorder(results: Sequence[Reranked], *, cell_px: float = 0.0, shortlist_weight: float = 0.0,
            min_inliers: int = 0) -> list[Reranked]:
    """The results in the order of their keys (module docstring); each result's ``order_score`` is its key.

    Candidates below ``min_inliers`` (raw inliers) follow in shortlist order, as in
    :func:`glocal.rerank.shortlist.final_order`. With ``cell_px`` = 0 and ``shortlist_weight`` = 0 the
    results come back unchanged.
    """
    if cell_px < 0 or shortlist_weight < 0:
        raise ValueError(f"cell_px and shortlist_weight must be >= 0, got {cell_px} and {shortlist_weight}")
    if (cell_px == 0 and shortlist_weight == 0) or not results:
        return list(results)
    items = sorted(results, key=lambda r: r.position)
    scores = np.array([r.shortlist_score for r in items], np.float64)
    best = float(scores.max())
    share = scores / best if best > 0 else np.zeros_like(scores)
    if cell_px > 0:
        distinct = distinct_counts([r.matches for r in items], cell_px).astype(np.float64)
    else:
        distinct = np.array([r.inliers for r in items], np.float64)
    keys = distinct + shortlist_weight * share
    inliers = np.array([r.inliers for r in items], np.int64)
    order = final_order(inliers, scores, min_inliers=min_inliers, keys=keys)
    return [dataclasses.replace(items[i], order_score=float(keys[i])) for i in order]
