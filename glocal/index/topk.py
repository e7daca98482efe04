"""Exact top-k by inner product: float32 matrix products over row chunks with a running top-k.

The database rows (float32 or float16, possibly memory-mapped) are scored ``CHUNK_BYTES`` of float32 at a
time, so float16 or memory-mapped rows are converted one chunk at a time, and queries ``QUERY_BATCH`` at a
time; each chunk's scores are merged into a :class:`TopK` by ``np.argpartition``. Used by the exact
:class:`glocal.index.global_index.GlobalIndex` and, through :func:`exact_top_k`, by query expansion.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import faiss
import numpy as np
import numpy.typing as npt

from glocal.index.blas import blas_threads

__all__ = ["CHUNK_BYTES", "QUERY_BATCH", "TopK", "chunk_rows", "exact_top_k", "limit_threads", "score_chunks"]

CHUNK_BYTES = 32 << 20  # float32 bytes of database rows scored at once
QUERY_BATCH = 256  # queries scored at once


class TopK:
    """Running top-k of (score, row) pairs per query, merged chunk by chunk with ``np.argpartition``.

    :param num_queries: number of queries Q.
    :param top: pairs kept per query.
    """

    def __init__(self, num_queries: int, top: int) -> None:
        self.top = top
        self.scores = np.full((num_queries, 0), -np.inf, np.float32)
        self.rows = np.full((num_queries, 0), -1, np.int64)

    def push(self, scores: npt.NDArray[np.float32], first_row: int) -> None:
        """Merge (Q, C) ``scores`` of the consecutive rows ``first_row .. first_row + C - 1``."""
        rows = np.broadcast_to(np.arange(first_row, first_row + scores.shape[1], dtype=np.int64), scores.shape)
        if scores.shape[1] > self.top:
            part = np.argpartition(-scores, self.top - 1, axis=1)[:, : self.top]
            scores, rows = np.take_along_axis(scores, part, 1), np.take_along_axis(rows, part, 1)
        s, r = np.concatenate([self.scores, scores], 1), np.concatenate([self.rows, rows], 1)
        if s.shape[1] > self.top:
            part = np.argpartition(-s, self.top - 1, axis=1)[:, : self.top]
            s, r = np.take_along_axis(s, part, 1), np.take_along_axis(r, part, 1)
        self.scores, self.rows = s, r

    def result(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """(rows, scores), each (Q, top), by score descending then row; missing: row -1, score -inf."""
        q, have = self.scores.shape
        scores = np.concatenate([self.scores, np.full((q, self.top - have), -np.inf, np.float32)], 1)
        rows = np.concatenate([self.rows, np.full((q, self.top - have), -1, np.int64)], 1)
        rows[~np.isfinite(scores)] = -1
        order = np.lexsort((np.where(rows < 0, np.iinfo(np.int64).max, rows), -scores), axis=1)
        return np.take_along_axis(rows, order, 1), np.take_along_axis(scores, order, 1)


def chunk_rows(dim: int, chunk_bytes: int | None = None) -> int:
    """Database rows of dimension ``dim`` scored at once: ``chunk_bytes`` (default :data:`CHUNK_BYTES`,
    read at call time) of float32, at least 1,024 rows."""
    return max(1024, (CHUNK_BYTES if chunk_bytes is None else chunk_bytes) // (4 * max(dim, 1)))


def score_chunks(acc: TopK, q: npt.NDArray[np.float32], database: npt.NDArray,
                 alive: npt.NDArray[np.bool_] | None, first_row: int, *, chunk_bytes: int | None = None) -> None:
    """Push the scores of ``database`` rows (chunk by chunk, float32) into ``acc``.

    :param q: (Q, D) float32 queries.
    :param database: (N, D) rows, numbered ``first_row ..`` in ``acc``.
    :param alive: optional (N,) bool; False rows score -inf.
    :param chunk_bytes: see :func:`chunk_rows`.
    """
    step = chunk_rows(database.shape[1], chunk_bytes)
    for start in range(0, len(database), step):
        block = np.asarray(database[start : start + step], dtype=np.float32)
        scores = q @ block.T
        if alive is not None:
            scores[:, ~alive[start : start + step]] = -np.inf
        acc.push(scores, first_row + start)


def exact_top_k(
    queries: npt.ArrayLike,
    database: npt.NDArray,
    top: int,
    *,
    alive: npt.NDArray[np.bool_] | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Exact maximum inner product search: the ``top`` rows of ``database`` with largest ``q . x``.

    :param queries: (Q, D) query vectors.
    :param database: (N, D) float32 or float16 rows (may be memory-mapped); scored in float32 chunks.
    :param top: results per query.
    :param alive: optional (N,) bool, False rows are never returned.
    :return: (rows (Q, top) int64, scores (Q, top) float32), best first (ties: lower row first);
        row -1 and score -inf where fewer rows exist.
    """
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    if top <= 0:
        raise ValueError(f"top must be positive, got {top}")
    if q.shape[1] != database.shape[1]:
        raise ValueError(f"queries are {q.shape[1]}-D but the database is {database.shape[1]}-D")
    rows, scores = [], []
    for b in range(0, len(q), QUERY_BATCH):
        acc = TopK(len(q[b : b + QUERY_BATCH]), top)
        score_chunks(acc, q[b : b + QUERY_BATCH], database, alive, 0)
        r, s = acc.result()
        rows.append(r)
        scores.append(s)
    if not rows:
        return np.zeros((0, top), np.int64), np.zeros((0, top), np.float32)
    return np.concatenate(rows), np.concatenate(scores)


@contextmanager
def limit_threads(n: int | None) -> Iterator[None]:
    """At most ``n`` OpenBLAS and faiss (OpenMP) threads inside the block; None leaves the defaults."""
    if n is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(n))
    try:
        with blas_threads(int(n)):
            yield
    finally:
        faiss.omp_set_num_threads(before)
