"""Visual-word codebooks: k-means training (faiss) and (multiple) assignment of descriptors to words."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

#: up to this many nearest words, k passes of argmax beat argpartition + sort (4096 words, k = 5:
#: 8.7 vs 33.5 ms for 2,000 descriptors here)
REPEATED_ARGMAX_K = 8


def top_k_by_repeated_argmax(scores: npt.NDArray[np.float32], k: int
                             ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """(N, k) column indices of each row's k largest scores, largest first, the first index on ties, and
    those scores. Overwrites the chosen entries of ``scores`` with -inf; ``k`` <= the number of columns."""
    rows = np.arange(len(scores))
    idx = np.empty((len(scores), k), np.int64)
    val = np.empty((len(scores), k), np.float32)
    for i in range(k):
        j = np.argmax(scores, axis=1)
        idx[:, i] = j
        val[:, i] = scores[rows, j]
        scores[rows, j] = -np.inf
    return idx, val


@dataclass(frozen=True)
class Codebook:
    """k visual words (centroids) in descriptor space.

    :param centroids: (k, d) float32.
    :param info: how it was trained (sample size, iterations, seed, seconds).
    """

    centroids: npt.NDArray[np.float32]
    info: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def assign(self, descriptors: npt.NDArray, k: int = 1, chunk: int | None = None) -> npt.NDArray[np.int64]:
        """Indices (N, k) of the k nearest words of each descriptor (exact L2 search), nearest first.

        Exact search as one float32 matmul per chunk: ``argmin ||x - c||^2 = argmax (x.c - ||c||^2 / 2)``.
        The default chunk keeps the (chunk, K) score block near 128 MB (512 rows for 65,536 words).
        """
        x = np.asarray(descriptors, dtype=np.float32)
        if not 1 <= k <= self.size:
            raise ValueError(f"k must be between 1 and the codebook size {self.size}, got {k}")
        if chunk is None:
            chunk = max(64, (1 << 25) // max(self.size, 1))
        n = len(x)
        out = np.empty((n, k), dtype=np.int64)
        c = self.centroids
        half_norms = 0.5 * np.einsum("ij,ij->i", c, c)
        for s in range(0, n, chunk):
            sim = x[s : s + chunk] @ c.T - half_norms
            if k == 1:
                out[s : s + chunk, 0] = np.argmax(sim, axis=1)
            elif k <= REPEATED_ARGMAX_K:
                out[s : s + chunk] = top_k_by_repeated_argmax(sim, k)[0]
            else:
                part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
                order = np.argsort(-np.take_along_axis(sim, part, axis=1), axis=1, kind="stable")
                out[s : s + chunk] = np.take_along_axis(part, order, axis=1)
        return out

    def state(self) -> dict[str, npt.NDArray]:
        return {"centroids": self.centroids}


#: codebook size of the large setups (HOW, FIRe, R1M)
DEFAULT_SIZE = 65_536


#: from this size on, :func:`train_codebook` runs approximate k-means (two-level assignment) by default: at
#: 65,536 words it matched faiss's error 3x faster (``benchmarks/kmeans_speed.py``); below, faiss is as fast
APPROXIMATE_FROM = 16_384


def train_codebook(
    descriptors: npt.NDArray, size: int = DEFAULT_SIZE, iterations: int = 10, seed: int = 0,
    max_sample: int | None = None, log: Callable[[str], None] | None = None, method: str = "auto",
    on_iteration: Callable[[], None] | None = None,
) -> Codebook:
    """k-means on a random sample of the descriptors.

    :param max_sample: descriptors used at most; default ``max(500,000, 39 x size)`` (faiss asks for >= 39
        training points per word). The size is clipped so every word has at least 39 points.
    :param method: ``faiss`` (exact Lloyd iterations, faiss), ``approximate``
        (:func:`glocal.index.kmeans.approximate_kmeans`) or ``auto`` (approximate from
        :data:`APPROXIMATE_FROM` words on).

    The info records the size used, the sample size, the iterations, the method, the seed and the training
    time; ``log`` (e.g. ``print``) receives the same as one line. ``on_iteration()`` is called once per
    iteration (after each with the approximate method; all at the end with faiss).
    """
    if method not in ("auto", "faiss", "approximate"):
        raise ValueError(f"method must be 'auto', 'faiss' or 'approximate', got {method!r}")
    x = np.ascontiguousarray(descriptors, dtype=np.float32)
    rng = np.random.default_rng(seed)
    max_sample = max(500_000, 39 * int(size)) if max_sample is None else int(max_sample)
    if len(x) > max_sample:
        x = x[np.sort(rng.choice(len(x), max_sample, replace=False))]
    if len(x) < 2:
        raise ValueError(f"cannot train a codebook from {len(x)} descriptors")
    k = int(min(size, max(2, len(x) // 39)))  # faiss wants >= 39 training points per centroid
    if method == "auto":
        method = "approximate" if k >= APPROXIMATE_FROM else "faiss"
    t0 = time.perf_counter()
    extra: dict = {}
    if method == "faiss":
        import faiss  # imported lazily: only codebook training needs it

        km = faiss.Kmeans(x.shape[1], k, niter=iterations, seed=seed, verbose=False, max_points_per_centroid=10_000_000)
        km.train(x)
        centroids = km.centroids
        for _ in range(iterations if on_iteration is not None else 0):
            on_iteration()
    else:
        from glocal.index.kmeans import approximate_kmeans

        centroids, run = approximate_kmeans(x, k, iterations, seed=seed, on_iteration=on_iteration)
        extra = {"cells": run["cells"], "nprobe": run["nprobe"],
                 "final_mse": run["history"][-1]["mse"] if run["history"] else None}
    seconds = time.perf_counter() - t0
    info = {"requested_size": int(size), "size": k, "sample": int(len(x)), "iterations": iterations,
            "method": method, "seed": seed, "seconds": round(seconds, 3)} | extra
    if log is not None:
        log(f"codebook: {k} words trained on {len(x):,} descriptors ({iterations} {method} k-means iterations, "
            f"seed {seed}) in {seconds:.1f} s")
    return Codebook(np.ascontiguousarray(centroids, dtype=np.float32), info)
