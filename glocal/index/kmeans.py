"""Codebook training: k-means, exact (faiss) or approximate with the two-level quantizer as assignment step.

The paper-size ASMK codebook (65,536 words, HOW / FIRe) wants >= 39 training descriptors per word, i.e.
2.6 M descriptors. Exact Lloyd iterations cost N x K x d multiply-adds each (43 TFLOP at that size, over half
an hour for 10 iterations on 2 cores). Here each iteration re-clusters the current centroids into ``K / 256``
coarse cells (:func:`glocal.index.quantizer.build_coarse_quantizer`) and assigns every descriptor through
them (``nprobe`` cells each, ~99 % of assignments exact at 65,536 words), the approximate k-means of Philbin
et al. (CVPR 2007) with a two-level quantizer instead of a k-d forest. The update is the exact mean of each
word's descriptors; an empty word is re-seeded by splitting the most populated one (a symmetric perturbation
of its centroid, as faiss does).

:func:`train_codebook` is the entry point: it samples the descriptors and runs faiss's exact k-means or
:func:`approximate_kmeans`. Imports go one way: ``codebook`` <- ``quantizer`` <- ``kmeans``.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from glocal.index.codebook import Codebook
from glocal.index.quantizer import build_coarse_quantizer, calibrate

#: descriptors on which the first iteration calibrates ``nprobe`` (99 % of assignments exact, plus the margin)
_CALIBRATION_SAMPLE = 5000
#: descriptors per quantizer call (several images' worth: larger products, see glocal.index.asmk.assign_many)
_CHUNK = 16_384
#: relative size of the perturbation that splits a populated centroid to re-seed an empty one
_SPLIT_EPS = 1.0 / 1024


def word_means(x: npt.NDArray[np.float32], words: npt.NDArray[np.int64], k: int
               ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """((k, d) mean of the descriptors assigned to each word (0 where none), (k,) counts)."""
    order = np.argsort(words, kind="stable")
    counts = np.bincount(words, minlength=k)
    present = np.flatnonzero(counts)
    starts = np.concatenate([[0], np.cumsum(counts)])[present]
    means = np.zeros((k, x.shape[1]), np.float64)
    # float32 sums (one gathered copy of x, no float64 copy: 2.6 M x 128 descriptors are 1.3 GB already)
    means[present] = np.add.reduceat(x[order], starts, axis=0) / counts[present, None]
    return means, counts


def split_for_empty(centroids: npt.NDArray[np.float64], counts: npt.NDArray[np.int64], rng: np.random.Generator
                    ) -> int:
    """Re-seed every empty word by splitting a populated one (the most populated first, its count halved);
    returns how many were re-seeded. ``centroids`` and ``counts`` are updated in place."""
    empty = np.flatnonzero(counts == 0)
    for e in empty:
        big = int(np.argmax(counts))
        direction = np.where(rng.random(centroids.shape[1]) < 0.5, -1.0, 1.0) * _SPLIT_EPS
        centroids[e] = centroids[big] * (1 + direction)
        centroids[big] = centroids[big] * (1 - direction)
        counts[e] = counts[big] // 2
        counts[big] -= counts[e]
    return len(empty)


def approximate_kmeans(
    descriptors: npt.NDArray, k: int, iterations: int = 10, seed: int = 0, nprobe: int | None = None,
    log: Callable[[str], None] | None = None, on_iteration: Callable[[], None] | None = None,
) -> tuple[npt.NDArray[np.float32], dict]:
    """(k, d) centroids and a record of the run (per-iteration mean squared error and seconds).

    Initialisation: k distinct descriptors drawn at random (seeded), like faiss. ``nprobe`` (cells probed per
    descriptor) is calibrated on the first iteration's codebook to 99 % exact assignments unless given.
    ``log`` gets a line per iteration; ``on_iteration()`` is called after each (progress bars).
    """
    x = np.ascontiguousarray(descriptors, dtype=np.float32)
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= {n} descriptors, got k = {k}")
    rng = np.random.default_rng(seed)
    init = np.sort(rng.choice(n, k, replace=False))
    centroids = x[init].astype(np.float64)
    history: list[dict] = []
    words = np.zeros(n, np.int64)
    cells = None
    for it in range(iterations):
        t0 = time.perf_counter()
        quantizer = build_coarse_quantizer(Codebook(centroids.astype(np.float32)), seed=seed + it, iterations=5)
        if nprobe is None:
            others = np.setdiff1d(np.arange(n), init, assume_unique=True)  # not the initial centroids themselves
            sample = x[np.sort(rng.choice(others, min(len(others), _CALIBRATION_SAMPLE), replace=False))]
            nprobe = calibrate(quantizer, sample, seed=seed).nprobe
        quantizer = quantizer.with_nprobe(nprobe)
        cells = quantizer.cells
        squared_error = 0.0  # of this step's assignment, accumulated chunk by chunk (no (n, d) temporaries)
        for s in range(0, n, _CHUNK):
            chunk = x[s:s + _CHUNK]
            words[s:s + _CHUNK] = quantizer.assign(chunk, 1)[:, 0]
            residual = chunk - centroids[words[s:s + _CHUNK]]
            squared_error += float(np.einsum("ij,ij->", residual, residual))
        mse = squared_error / n
        centroids, counts = word_means(x, words, k)
        reseeded = split_for_empty(centroids, counts, rng)
        history.append({"iteration": it + 1, "mse": round(mse, 6), "empty_reseeded": reseeded,
                        "seconds": round(time.perf_counter() - t0, 2)})
        if on_iteration is not None:
            on_iteration()
        if log is not None:
            log(f"k-means iteration {it + 1}/{iterations}: mean squared error {mse:.5f}, {reseeded} empty words "
                f"re-seeded, {history[-1]['seconds']:.1f} s")
    return centroids.astype(np.float32), {"assignment": "two-level", "nprobe": nprobe, "cells": cells,
                                          "history": history}


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
        (:func:`approximate_kmeans`) or ``auto`` (approximate from
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
