"""The IVF-PQ back end of :class:`glocal.index.global_index.GlobalIndex` (``kind="ivfpq"``): faiss calls only.

A faiss ``IndexIVFPQ`` (inner product) whose stored ids are the global index's *row numbers*, not the
caller's ids: training on seeded subsamples (coarse cells by :mod:`glocal.index.ivfpq_train`, PQ codebooks by
faiss), adding in chunks with the cells assigned by BLAS products, search that skips tombstoned rows, removal and renumbering
of rows after compaction, (de)serialisation, and the bytes it occupies. Parameters: :class:`IvfPqParams`.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from glocal.index.global_params import IvfPqParams
from glocal.index.ivfpq_train import assign, coarse_kmeans
from glocal.index.topk import limit_threads

#: vectors encoded and appended per faiss call in :func:`add_rows`
ADD_CHUNK = 32_768

__all__ = ["add_rows", "deserialize", "remove_rows", "renumber_rows", "search", "serialize", "size_bytes", "train"]


def train(x: npt.NDArray[np.float32], dim: int, params: IvfPqParams, *, seed: int, threads: int | None
          ) -> tuple[Any, dict]:
    """(a trained, empty faiss ``IndexIVFPQ``, the training record) for ``(S, dim)`` vectors ``x``.

    The coarse cells: :func:`glocal.index.ivfpq_train.coarse_kmeans` on a seeded subsample of at most
    ``min(train_size, train_per_cell x nlist)`` rows. The PQ codebooks: faiss's k-means per sub-quantizer
    (``pq_iterations``) on the residuals of at most ``pq_train_size`` other rows to their cell's centroid
    (cells by :func:`glocal.index.ivfpq_train.assign`). ``nprobe`` set from ``params``. The record gives the
    sample sizes, points per cell, iterations and seconds.
    """
    if dim % params.m:
        raise ValueError(f"IVF-PQ m={params.m} must divide the dimension {dim}")
    if len(x) < max(params.nlist, 2**params.nbits):
        raise ValueError(f"training sample of {len(x)} vectors is smaller than nlist={params.nlist} "
                         f"or 2**nbits={2 ** params.nbits}")
    rng = np.random.default_rng(seed)
    coarse = _subsample(x, min(params.train_size, params.train_per_cell * params.nlist), rng)
    pq_sample = _subsample(x, params.pq_train_size, rng)
    t0 = time.perf_counter()
    with limit_threads(threads):
        centroids, record = coarse_kmeans(coarse, params.nlist, params.iterations, seed)
        t1 = time.perf_counter()
        residuals = pq_sample - centroids[assign(pq_sample, centroids)[0]]
        quantizer = faiss.IndexFlatIP(dim)
        quantizer.add(centroids)
        index = faiss.IndexIVFPQ(quantizer, dim, params.nlist, params.m, params.nbits, faiss.METRIC_INNER_PRODUCT)
        index.pq.cp.seed = seed + 1
        index.pq.cp.niter = params.pq_iterations
        index.pq.cp.max_points_per_centroid = max(1, -(-len(residuals) // 2**params.nbits))
        with _blas_distances():
            index.pq.train(np.ascontiguousarray(residuals, dtype=np.float32))
    index.is_trained = True  # what faiss's IndexIVFPQ.train ends with (no precomputed tables: inner product)
    index.own_fields = True
    quantizer.this.disown()  # the IVF index owns (and frees) its quantizer from now on
    index.nprobe = params.nprobe
    record |= {"pq_sample": len(residuals), "pq_iterations": params.pq_iterations,
               "pq_seconds": round(time.perf_counter() - t1, 2), "seconds": round(time.perf_counter() - t0, 2),
               "seed": seed}
    return index, record


@contextmanager
def _blas_distances() -> Iterator[None]:
    """faiss's k-means with BLAS distances from 20 points on (its default, 128,000, sends smaller sets to a
    per-vector loop: 20 s instead of 1.8 s of CPU for 128 sub-quantizers of 16,384 points, 10 iterations)."""
    before = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 20
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = before


def _subsample(x: npt.NDArray[np.float32], size: int, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """At most ``size`` rows of ``x`` (seeded, in their order)."""
    if len(x) <= size:
        return x
    return x[np.sort(rng.choice(len(x), size, replace=False))]


def add_rows(index: Any, x: npt.NDArray[np.float32], first_row: int, *, threads: int | None) -> None:
    """Add the PQ codes of ``x`` as rows ``first_row, first_row + 1, ...``: cells by
    :func:`glocal.index.ivfpq_train.assign` (chunked float32 products against the centroids, never all
    distances at once), then faiss encodes the residuals and appends them to the lists, chunk by chunk."""
    centroids = faiss.extract_index_ivf(index).quantizer.reconstruct_n(0, index.nlist)
    half = 0.5 * np.einsum("ij,ij->i", centroids, centroids)
    with limit_threads(threads):
        for s in range(0, len(x), ADD_CHUNK):
            chunk = np.ascontiguousarray(x[s:s + ADD_CHUNK], dtype=np.float32)
            cells, _ = assign(chunk, centroids, half)
            ids = np.arange(first_row + s, first_row + s + len(chunk), dtype=np.int64)
            index.add_core(len(chunk), faiss.swig_ptr(chunk), faiss.swig_ptr(ids), faiss.swig_ptr(cells))


def search(index: Any, q: npt.NDArray[np.float32], top: int, nprobe: int, dead: npt.NDArray[np.int64]
           ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """(rows (Q, top) int64, scores (Q, top) float32) of the best rows not in ``dead``, ``nprobe`` cells
    scanned per query; row -1 and score -inf where fewer rows were found."""
    params = faiss.SearchParametersIVF()
    params.nprobe = int(nprobe)
    if len(dead):
        batch = faiss.IDSelectorBatch(dead)  # kept referenced until the search returns
        params.sel = faiss.IDSelectorNot(batch)
    scores, rows = index.search(np.ascontiguousarray(q), top, params=params)
    return rows.astype(np.int64), np.where(rows >= 0, scores, -np.inf).astype(np.float32)


def remove_rows(index: Any, rows: npt.NDArray[np.int64]) -> None:
    """Drop the codes of these rows from the inverted lists (the other rows keep their numbers)."""
    index.remove_ids(faiss.IDSelectorBatch(rows))


def renumber_rows(index: Any, old_rows: npt.NDArray[np.int64]) -> None:
    """Rewrite the ids stored in the inverted lists: row ``old_rows[i]`` becomes ``i``."""
    invlists = faiss.extract_index_ivf(index).invlists
    for cell in range(invlists.nlist):
        n = invlists.list_size(cell)
        if n:
            stored = faiss.rev_swig_ptr(invlists.get_ids(cell), n).copy()
            codes = faiss.rev_swig_ptr(invlists.get_codes(cell), n * invlists.code_size).copy()
            new = np.searchsorted(old_rows, stored).astype(np.int64)
            invlists.update_entries(cell, 0, n, faiss.swig_ptr(new), faiss.swig_ptr(codes))


def serialize(index: Any) -> bytes:
    return faiss.serialize_index(index).tobytes()


def deserialize(data: npt.NDArray[np.uint8]) -> Any:
    return faiss.deserialize_index(data)


def size_bytes(params: IvfPqParams | None, dim: int) -> tuple[int, int]:
    """(bytes of one vector's PQ code, bytes of the trained quantizers: coarse centroids and PQ codebooks)."""
    code = 0 if params is None else params.m * params.nbits // 8
    quantizers = 0 if params is None else 4 * dim * (params.nlist + 2**params.nbits)
    return code, quantizers
