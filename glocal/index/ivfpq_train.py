"""Training of the IVF-PQ coarse quantizer: spherical k-means on a capped sample, BLAS assignment in chunks.

Exact Lloyd iterations cost ``S x nlist x D`` multiply-adds each. At a million 512-D images (nlist 4,096) the
previous training ran faiss's k-means on 64 points per cell (262,144 vectors, 10 iterations: 15 s per
iteration on one quiet core, ~2.5 min, over 30 min at load 30). Here:

- the sample is capped at :attr:`IvfPqParams.train_per_cell` points per cell (32 by default: faiss warns
  below 39, the IVF literature trains on 30-256 per cell) and at :attr:`IvfPqParams.train_size`;
- the assignment step is one float32 matrix product per chunk of rows: the nearest centroid in L2 is
  ``argmin ||x||^2 - 2 x.c + ||c||^2 = argmax x.c - ||c||^2 / 2`` (``||x||^2`` is constant per row), so
  no (S, nlist, D) difference is ever formed, and a chunk's (rows, nlist) score block stays ~64 MB;
- the centroids are re-normalised after each update (spherical k-means, as faiss trains an inner-product
  IVF), so the assignment equals the inner-product probe the index does at query time;
- an empty cell is re-seeded by splitting the most populated one (:func:`glocal.index.kmeans.split_for_empty`).

:func:`assign` (the same chunked product) also gives the cells of the vectors added to the index.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from glocal.index.kmeans import split_for_empty, word_means

__all__ = ["SCORE_BLOCK_BYTES", "assign", "coarse_kmeans"]

#: bytes of one chunk's (rows, nlist) float32 score block in :func:`assign`
SCORE_BLOCK_BYTES = 64 << 20


def assign(x: npt.NDArray[np.float32], centroids: npt.NDArray[np.float32],
           half_norms: npt.NDArray[np.float32] | None = None) -> tuple[npt.NDArray[np.int64], float]:
    """((n,) nearest centroid in L2 of every row, sum of the squared distances), by chunks of rows.

    Per chunk: ``s = x c^T - ||c||^2 / 2`` (one sgemm), ``argmax`` per row; the squared distance is
    ``||x||^2 - 2 max(s)``. ``half_norms`` (``||c||^2 / 2``) may be passed to skip recomputing it.
    """
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    h = (0.5 * np.einsum("ij,ij->i", c, c)) if half_norms is None else half_norms
    rows = max(64, SCORE_BLOCK_BYTES // (4 * len(c)))
    out = np.empty(len(x), np.int64)
    err = 0.0
    for s in range(0, len(x), rows):
        chunk = np.ascontiguousarray(x[s:s + rows], dtype=np.float32)
        scores = chunk @ c.T
        scores -= h
        best = scores.argmax(axis=1)
        out[s:s + len(chunk)] = best
        top = scores[np.arange(len(chunk)), best].astype(np.float64)
        err += float(np.einsum("ij,ij->", chunk, chunk, dtype=np.float64) - 2 * top.sum())
    return out, err


def coarse_kmeans(x: npt.NDArray[np.float32], k: int, iterations: int, seed: int,
                  log: Callable[[str], None] | None = None) -> tuple[npt.NDArray[np.float32], dict]:
    """((k, D) unit-norm centroids, record of the run) by spherical k-means on the rows of ``x``.

    Lloyd's algorithm (Lloyd 1982) with unit centroids: assign ``a(i) = argmin_j ||x_i - c_j||^2``, update
    ``c_j = mean_{a(i) = j} x_i / ||mean||``. Initialisation: ``k`` distinct rows drawn at random (seeded).
    The record: sample size, points per cell, iterations, per-iteration mean squared error and seconds.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= {n} vectors, got k = {k}")
    rng = np.random.default_rng(seed)
    centroids = _normalise(x[np.sort(rng.choice(n, k, replace=False))].astype(np.float64))
    history = []
    for it in range(iterations):
        t0 = time.perf_counter()
        words, err = assign(x, centroids.astype(np.float32))
        means, counts = word_means(x, words, k)
        keep = counts == 0  # an empty cell keeps its centroid until split_for_empty re-seeds it
        means[keep] = centroids[keep]
        reseeded = split_for_empty(means, counts, rng)
        centroids = _normalise(means)
        history.append({"iteration": it + 1, "mse": round(err / n, 6), "empty_reseeded": reseeded,
                        "seconds": round(time.perf_counter() - t0, 2)})
        if log is not None:
            log(f"IVF k-means {it + 1}/{iterations}: mean squared error {err / n:.5f}, {reseeded} empty "
                f"cells re-seeded, {history[-1]['seconds']:.1f} s")
    record = {"coarse_sample": n, "points_per_cell": round(n / k, 1), "coarse_iterations": iterations,
              "coarse_mse": history[-1]["mse"] if history else None,
              "coarse_seconds": round(sum(h["seconds"] for h in history), 2)}
    return centroids.astype(np.float32), record


def _normalise(c: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    norms = np.linalg.norm(c, axis=1, keepdims=True)
    return c / np.where(norms > 0, norms, 1.0)
