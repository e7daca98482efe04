"""Exact re-scoring of an IVF-PQ shortlist from the full vectors kept on disk (faiss calls it "refine").

IVF-PQ ranks by ``q . (c + r~)``, the inner product with the cell centroid plus the PQ-decoded residual; the
ranking error is that of the residual's code, larger than the gaps between close neighbours. Keeping the
full vectors (float16 or float32, memory-mapped ``.npy`` segments: only the rows read are paged in) and
replacing the scores of IVF-PQ's top ``K`` by the exact ``q . x`` gives the exact top ``k <= K`` whenever
the exact top ``k`` is among IVF-PQ's top ``K`` (Jegou et al., TPAMI 2011, section IV.C "re-ranking with
source coding"; here the source is the vector itself).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["bounds_of", "gather", "rescore"]


def bounds_of(segments: Sequence[npt.NDArray]) -> npt.NDArray[np.int64]:
    """(len(segments) + 1,) first row of each segment, then the number of rows."""
    return np.concatenate([[0], np.cumsum([len(s) for s in segments])]).astype(np.int64)


def gather(segments: Sequence[npt.NDArray], rows: npt.NDArray[np.int64],
           bounds: npt.NDArray[np.int64] | None = None) -> npt.NDArray[np.float32]:
    """(len(rows), D) float32 copies of the stored rows ``rows`` (numbered across ``segments`` in order);
    each segment is read once, in increasing row order (sequential pages of a memory map). ``bounds``:
    :func:`bounds_of` the segments, when the caller has it."""
    bounds = bounds_of(segments) if bounds is None else bounds
    rows = np.asarray(rows, np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= bounds[-1]):
        raise IndexError(f"rows outside 0..{bounds[-1] - 1}")
    dim = segments[0].shape[1] if len(segments) else 0
    out = np.empty((len(rows), dim), np.float32)
    seg = np.searchsorted(bounds, rows, side="right") - 1
    for s in np.unique(seg):
        where = np.flatnonzero(seg == s)
        local = rows[where] - bounds[s]
        order = np.argsort(local, kind="stable")
        out[where[order]] = segments[s][local[order]]
    return out


def rescore(queries: npt.NDArray[np.float32], rows: npt.NDArray[np.int64], segments: Sequence[npt.NDArray],
            top: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """(rows (Q, top), scores (Q, top)): each query's candidate ``rows`` (row -1: none) re-ranked by the exact
    inner product with their stored vectors, best first (ties: the candidate order); -1 / -inf pad."""
    q = np.asarray(queries, np.float32)
    out_rows = np.full((len(q), top), -1, np.int64)
    out_scores = np.full((len(q), top), -np.inf, np.float32)
    bounds = bounds_of(segments)
    for i in range(len(q)):
        cand = rows[i][rows[i] >= 0]
        if not len(cand):
            continue
        scores = gather(segments, cand, bounds) @ q[i]
        order = np.argsort(-scores, kind="stable")[:top]
        out_rows[i, : len(order)], out_scores[i, : len(order)] = cand[order], scores[order]
    return out_rows, out_scores
