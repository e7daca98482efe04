"""The IVF-PQ back end of :class:`glocal.index.global_index.GlobalIndex` (``kind="ivfpq"``): faiss calls only.

A faiss ``IndexIVFPQ`` (inner product) whose stored ids are the global index's *row numbers*, not the
caller's ids: training on a seeded subsample, search that skips tombstoned rows, removal and renumbering
of rows after compaction, (de)serialisation, and the bytes it occupies. Parameters: :class:`IvfPqParams`.
"""
from __future__ import annotations

from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from glocal.index.global_params import IvfPqParams
from glocal.index.topk import limit_threads

__all__ = ["add_rows", "deserialize", "remove_rows", "renumber_rows", "search", "serialize", "size_bytes", "train"]


def train(x: npt.NDArray[np.float32], dim: int, params: IvfPqParams, *, seed: int, threads: int | None) -> Any:
    """A trained, empty faiss ``IndexIVFPQ`` (k-means cells, then PQ on residuals) for ``(S, dim)`` vectors
    ``x``, of which at most ``params.train_size`` (a seeded subsample) are used; ``nprobe`` set from ``params``."""
    if dim % params.m:
        raise ValueError(f"IVF-PQ m={params.m} must divide the dimension {dim}")
    if len(x) > params.train_size:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), params.train_size, replace=False))]
    if len(x) < max(params.nlist, 2**params.nbits):
        raise ValueError(f"training sample of {len(x)} vectors is smaller than nlist={params.nlist} "
                         f"or 2**nbits={2 ** params.nbits}")
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, params.nlist, params.m, params.nbits, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.pq.cp.seed = seed + 1
    with limit_threads(threads):
        index.train(np.ascontiguousarray(x, dtype=np.float32))
    index.own_fields = True
    quantizer.this.disown()  # the IVF index owns (and frees) its quantizer from now on
    index.nprobe = params.nprobe
    return index


def add_rows(index: Any, x: npt.NDArray[np.float32], first_row: int, *, threads: int | None) -> None:
    """Add the PQ codes of ``x`` as rows ``first_row, first_row + 1, ...``."""
    with limit_threads(threads):
        index.add_with_ids(np.ascontiguousarray(x), np.arange(first_row, first_row + len(x)))


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
