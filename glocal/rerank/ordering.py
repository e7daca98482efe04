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

__all__ = ["distinct_inliers", "reorder"]


def distinct_inliers(matches: npt.ArrayLike, cell_px: float) -> int:
    """``d`` of the module docstring for one candidate's (K, 4) inlier matches x_q, y_q, x_db, y_db."""
    m = np.asarray(matches, np.float64).reshape(-1, 4)
    if cell_px <= 0 or len(m) == 0:
        return len(m)
    cells_q = np.unique(np.floor(m[:, :2] / cell_px), axis=0)
    cells_db = np.unique(np.floor(m[:, 2:] / cell_px), axis=0)
    return int(min(len(cells_q), len(cells_db)))


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
    distinct = np.array([distinct_inliers(r.matches, cell_px) if cell_px > 0 else r.inliers for r in items],
                        np.float64)
    keys = distinct + shortlist_weight * share
    inliers = np.array([r.inliers for r in items], np.int64)
    order = final_order(inliers, scores, min_inliers=min_inliers, keys=keys)
    return [dataclasses.replace(items[i], order_score=float(keys[i])) for i in order]
