"""Fast (approximate) assignment of descriptors to visual words: a two-level partition of the codebook.

Exact assignment to a 65,536-word codebook costs one (N x 65,536 x d) matrix product per image. Here the
words themselves are clustered into ``cells`` coarse groups (k-means of the centroids); a descriptor is
compared with the coarse centres first, then exactly with the words of its ``nprobe`` nearest cells only.
The second level runs one small matrix product per coarse cell over all descriptors that probe it, so
the work stays in BLAS (no Python loop over descriptors), and cells are split over ``threads`` threads.

Agreement with exact search depends on the data, so :func:`calibrate` measures it on held-out
descriptors and picks the smallest ``nprobe`` that reaches a target (99 % by default, plus a margin).

The products are small for one image (~110 descriptors per cell), which this BLAS runs at about half its
rate; the index build therefore quantises several images per call (:func:`glocal.index.asmk.assign_many`).
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from glocal.index.blas import blas_threads
from glocal.index.codebook import REPEATED_ARGMAX_K, Codebook, top_k_by_repeated_argmax

#: nprobe values tried by :func:`calibrate`, smallest first.
NPROBE_STEPS = (2, 3, 4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 64, 96, 128)

#: :func:`calibrate` asks for ``target + CALIBRATION_MARGIN`` on its sample: new images differ from the
#: calibration sample (at 65,536 words, nprobe 24 gave 99.05 % on held-out RootSIFT but 98.96 % on 30 other
#: images; nprobe 28 gave 99.3 % and 99.27 %, ``benchmarks/asmk_scale.py``).
CALIBRATION_MARGIN = 0.002


@dataclass(frozen=True)
class CoarseQuantizer:
    """Two-level quantizer over a codebook.

    :param codebook: the visual words.
    :param coarse: (G, d) float32 centres of the coarse cells.
    :param order: (K,) int64 word ids sorted by cell; cell g holds ``order[bounds[g]:bounds[g + 1]]``.
    :param bounds: (G + 1,) int64 cell boundaries in ``order``.
    :param nprobe: number of nearest cells whose words are compared exactly with each descriptor.
    :param nprobe_multi: ``nprobe`` for multiple assignment (k > 1, the query side), which needs more cells
        for the same agreement; None: ``nprobe``.
    :param threads: threads sharing the per-cell matrix products (numpy releases the GIL in BLAS).
    :param info: how it was built and calibrated (cells, seed, measured agreement, seconds).
    """

    codebook: Codebook
    coarse: npt.NDArray[np.float32]
    order: npt.NDArray[np.int64]
    bounds: npt.NDArray[np.int64]
    nprobe: int = 16
    threads: int = 2
    nprobe_multi: int | None = None
    info: dict = field(default_factory=dict, compare=False)
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def cells(self) -> int:
        return int(self.coarse.shape[0])

    def with_nprobe(self, nprobe: int) -> CoarseQuantizer:
        """The same quantizer probing ``nprobe`` cells for every k."""
        return replace(self, nprobe=int(nprobe), nprobe_multi=None)

    def probes(self, k: int) -> int:
        """Cells probed per descriptor for k nearest words."""
        p = self.nprobe if k == 1 or self.nprobe_multi is None else self.nprobe_multi
        return min(p, self.cells)

    def _prepared(self) -> tuple[list[npt.NDArray[np.float32]], npt.NDArray[np.float32]]:
        """Per cell, its words as one contiguous (d + 1, n_g) block with a bias row; and the coarse half
        squared norms (computed once, kept).

        Scores are ``x . w - |w|^2 / 2`` (the same argmax as the smallest ``|x - w|``); the bias rides in the
        matrix product as an extra row, against a constant 1 appended to each descriptor. Contiguous
        blocks matter: products over column slices of one big array did not run in parallel here.
        """
        if "blocks" not in self._cache:
            c = np.asarray(self.codebook.centroids, np.float32)[self.order]
            bias = -0.5 * np.einsum("ij,ij->i", c, c)
            blocks = []
            for g in range(self.cells):
                lo, hi = self.bounds[g], self.bounds[g + 1]
                block = np.empty((c.shape[1] + 1, hi - lo), np.float32)
                block[:-1] = c[lo:hi].T
                block[-1] = bias[lo:hi]
                blocks.append(block)
            self._cache["blocks"] = (blocks, 0.5 * np.einsum("ij,ij->i", self.coarse, self.coarse))
        return self._cache["blocks"]

    def assign(self, descriptors: npt.NDArray, k: int = 1) -> npt.NDArray[np.int64]:
        """Indices (N, k) of (approximately) the k nearest words of each descriptor, nearest first."""
        x = np.asarray(descriptors, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"descriptors must be (N, d), got shape {x.shape}")
        n, d = x.shape
        if n == 0:
            return np.zeros((0, k), np.int64)
        blocks, coarse_half = self._prepared()
        p = self.probes(k)
        xa = np.empty((n, d + 1), np.float32)  # descriptors with the constant 1 of the bias row
        xa[:, :d] = x
        xa[:, d] = 1.0
        pool = ThreadPoolExecutor(self.threads) if self.threads > 1 and n >= 64 else None
        try:
            return self._assign(x, xa, k, p, blocks, coarse_half, pool)
        finally:
            if pool is not None:
                pool.shutdown()

    def _assign(self, x: npt.NDArray[np.float32], xa: npt.NDArray[np.float32], k: int, p: int,
                blocks: list[npt.NDArray[np.float32]], coarse_half: npt.NDArray[np.float32],
                pool: ThreadPoolExecutor | None) -> npt.NDArray[np.int64]:
        n = len(x)
        probe = np.empty((n, p), np.int64) if p < self.cells else np.tile(np.arange(p), (n, 1))

        def probe_rows(rows: slice) -> None:  # nearest p coarse cells of a block of descriptors
            with blas_threads(1):
                s1 = x[rows] @ self.coarse.T
                s1 -= coarse_half
                probe[rows] = np.argpartition(s1, self.cells - p, axis=1)[:, self.cells - p:]

        if p < self.cells:
            if pool is None:
                probe_rows(slice(0, n))
            else:
                step = -(-n // self.threads)
                list(pool.map(probe_rows, [slice(t, t + step) for t in range(0, n, step)]))
        # (descriptor, probed cell) pairs grouped by cell; cell ids fit int16/int32 for a fast radix sort
        cell_of_pair = probe.reshape(-1).astype(np.int16 if self.cells <= 32767 else np.int32)
        pair_order = np.argsort(cell_of_pair, kind="stable")
        desc_of_pair = pair_order // p
        counts = np.bincount(cell_of_pair, minlength=self.cells)
        starts = np.concatenate([[0], np.cumsum(counts)])
        vals = np.full((n * p, k), -np.inf, np.float32)  # per pair (in cell order): best values in the cell
        pos = np.zeros((n * p, k), np.int64)  # ... and their positions among the cell-sorted words
        bounds = self.bounds

        def run_cells(cells: npt.NDArray[np.int64]) -> None:
            with blas_threads(1):
                for g in cells:
                    a, b = starts[g], starts[g + 1]
                    lo, hi = bounds[g], bounds[g + 1]
                    if hi == lo:
                        continue
                    s = np.take(xa, desc_of_pair[a:b], axis=0) @ blocks[g]
                    if k == 1:
                        j = s.argmax(axis=1)
                        vals[a:b, 0] = s[np.arange(b - a), j]
                        pos[a:b, 0] = j + lo
                        continue
                    m = min(k, hi - lo)
                    if m <= REPEATED_ARGMAX_K:
                        j, vals[a:b, :m] = top_k_by_repeated_argmax(s, m)
                    else:
                        j = np.argpartition(s, hi - lo - m, axis=1)[:, hi - lo - m:]
                        vals[a:b, :m] = np.take_along_axis(s, j, axis=1)
                    pos[a:b, :m] = j + lo

        busy = np.flatnonzero(counts)
        busy = busy[np.argsort(-counts[busy], kind="stable")]  # largest first, dealt round-robin: balanced
        if pool is not None and len(busy) > 1:
            list(pool.map(run_cells, [busy[t :: self.threads] for t in range(self.threads)]))
        else:
            run_cells(busy)
        # back to descriptor order: (n, p * k) candidates each
        by_desc_vals = np.empty_like(vals)
        by_desc_vals[pair_order] = vals
        by_desc_pos = np.empty_like(pos)
        by_desc_pos[pair_order] = pos
        cand_vals = by_desc_vals.reshape(n, p * k)
        cand_pos = by_desc_pos.reshape(n, p * k)
        if k == 1:
            best = np.argmax(cand_vals, axis=1)[:, None]
        else:
            part = np.argpartition(-cand_vals, k - 1, axis=1)[:, :k]
            best = np.take_along_axis(part, np.argsort(-np.take_along_axis(cand_vals, part, axis=1), axis=1,
                                                       kind="stable"), axis=1)
        return self.order[np.take_along_axis(cand_pos, best, axis=1)]


def build_coarse_quantizer(
    codebook: Codebook, cells: int | None = None, nprobe: int = 16, seed: int = 0, threads: int = 2,
    iterations: int = 10,
) -> CoarseQuantizer:
    """Cluster the codebook's words into ``cells`` coarse cells (faiss k-means, seeded).

    :param cells: number of coarse cells; default ``K / 256`` (at least 1), i.e. about 256 words a cell, so
        both levels are matrix products of useful size.
    """
    import faiss  # lazily: only building needs it

    t0 = time.perf_counter()
    c = np.ascontiguousarray(codebook.centroids, dtype=np.float32)
    k = codebook.size
    g = int(cells or max(1, k // 256))
    g = max(1, min(g, k))
    if g == 1:
        coarse = c.mean(axis=0, keepdims=True)
    else:
        km = faiss.Kmeans(codebook.dim, g, niter=iterations, seed=seed, verbose=False,
                          max_points_per_centroid=k, min_points_per_centroid=1)
        km.train(c)
        coarse = np.ascontiguousarray(km.centroids, dtype=np.float32)
    cell = np.argmax(c @ coarse.T - 0.5 * np.einsum("ij,ij->i", coarse, coarse), axis=1)
    order = np.argsort(cell, kind="stable").astype(np.int64)
    bounds = np.concatenate([[0], np.cumsum(np.bincount(cell, minlength=g))]).astype(np.int64)
    info = {"cells": g, "seed": seed, "iterations": iterations, "seconds": round(time.perf_counter() - t0, 3)}
    return CoarseQuantizer(codebook, coarse, order, bounds, nprobe=min(nprobe, g), threads=threads, info=info)


def agreement(approx: npt.NDArray, exact: npt.NDArray) -> float:
    """Fraction of assignments identical to exact search: for k > 1, of (descriptor, rank) slots whose word
    is among the exact k nearest of that descriptor."""
    a = np.asarray(approx)
    e = np.asarray(exact)
    if a.shape != e.shape:
        raise ValueError(f"assignment shapes differ: {a.shape} vs {e.shape}")
    if a.size == 0:
        return 1.0
    if a.shape[1] == 1:
        return float(np.mean(a[:, 0] == e[:, 0]))
    hit = (a[:, :, None] == e[:, None, :]).any(axis=2)
    return float(hit.mean())


def calibrate(
    quantizer: CoarseQuantizer, held_out: npt.NDArray, target: float = 0.99, k: int = 1, max_sample: int = 5000,
    seed: int = 0, margin: float = CALIBRATION_MARGIN,
) -> CoarseQuantizer:
    """Smallest ``nprobe`` (of :data:`NPROBE_STEPS`) whose k-nearest assignments agree with exact search on
    at least ``target + margin`` of ``held_out`` descriptors (which should not be the codebook's own centroids).

    Sets ``nprobe`` for k = 1 and ``nprobe_multi`` for k > 1. The measured agreement and timings go into
    ``info`` (under ``"query"`` for k > 1); if no step reaches the target, all cells are probed (exact)
    and ``reached`` is False.
    """
    x = np.asarray(held_out, dtype=np.float32)
    if len(x) > max_sample:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), max_sample, replace=False))]
    t0 = time.perf_counter()
    exact = quantizer.codebook.assign(x, k)
    exact_s = time.perf_counter() - t0
    chosen, measured, seconds = quantizer.cells, 1.0, exact_s
    for p in NPROBE_STEPS:
        if p >= quantizer.cells:
            break
        q = quantizer.with_nprobe(p)
        t0 = time.perf_counter()
        got = q.assign(x, k)
        dt = time.perf_counter() - t0
        a = agreement(got, exact)
        if a >= target + margin:
            chosen, measured, seconds = p, a, dt
            break
    found = {
        "nprobe": chosen, "agreement": round(measured, 5), "target": target, "margin": margin, "k": k,
        "calibration_sample": len(x),
        "reached": measured >= target, "ms_per_1000": round(1000 * seconds * 1000 / max(len(x), 1), 2),
        "exact_ms_per_1000": round(1000 * exact_s * 1000 / max(len(x), 1), 2),
    }
    if k > 1:
        return replace(quantizer, nprobe_multi=chosen, info=dict(quantizer.info) | {"query": found})
    return replace(quantizer, nprobe=chosen, info=dict(quantizer.info) | found)


def fast_quantizer(
    codebook: Codebook, held_out: npt.NDArray | None = None, target: float = 0.99, k: int = 1, seed: int = 0,
    cells: int | None = None, threads: int = 2, query_k: int | None = None,
) -> CoarseQuantizer:
    """Build a :class:`CoarseQuantizer` and, given held-out descriptors, calibrate ``nprobe`` to ``target``
    for ``k`` nearest words (the database side) and, with ``query_k`` > 1, ``nprobe_multi`` for the
    query side's multiple assignment.

    Without held-out data ``nprobe`` defaults to 28 of ``K / 256`` cells (99.2-99.3 % agreement at k = 1 on
    RootSIFT descriptors with a 65,536-word codebook, ``benchmarks/asmk_scale.py``) and ``nprobe_multi``
    to 40 (99.4-99.5 % at k = 5); ``info["calibrated"]`` says which.
    """
    q = build_coarse_quantizer(codebook, cells=cells, nprobe=28, seed=seed, threads=threads)
    if held_out is None or len(held_out) == 0:
        return replace(q, nprobe_multi=min(40, q.cells), info=q.info | {"calibrated": False})
    q = calibrate(q, held_out, target=target, k=k, seed=seed)
    if query_k is not None and query_k > 1:
        q = calibrate(q, held_out, target=target, k=query_k, seed=seed)
    return replace(q, info=q.info | {"calibrated": True})
