"""alpha-weighted query expansion (alpha-QE) and database-side augmentation (alpha-DBA) of global vectors.

Radenovic, Tolias, Chum, "Fine-tuning CNN image retrieval with no human annotation" (PAMI 2018), sec. on
query expansion: the new query is the L2-normalized sum of the query and its top-ranked database vectors,
each weighted by its similarity to the query raised to the power alpha,

    alpha-QE:   q' = normalize( sum_{i=0}^{n-1} w_i x_i ),  x_0 = q, w_0 = 1,
                x_1..x_{n-1} the top n-1 database vectors of q,  w_i = max(q^T x_i, 0)^alpha,

and alpha-DBA applies the same rule to every database vector x with its own top neighbours in the
database (itself excluded from the neighbours, then counted once as x_0 with weight 1):

    alpha-DBA:  x' = normalize( x + sum_{j=1}^{k-1} max(x^T y_j, 0)^alpha y_j ).

Conventions (stated because papers differ): ``n`` and ``k`` count the vector itself, so ``n = 1`` gives
the query back (normalized) and ``n = 2`` adds one neighbour; negative similarities weigh 0 (before the
power, so alpha = 0 gives weight 1 to every neighbour: plain average QE); vectors are expected
L2-normalized, so ``q^T x`` is the cosine similarity. alpha = 3 is the paper's default; n is typically
2..10. A database augmented with DBA is searched with queries expanded against the *augmented* vectors.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from glocal.index.global_index import GlobalIndex, exact_top_k

__all__ = [
    "QueryExpansion",
    "alpha_dba",
    "alpha_qe",
    "alpha_weighted_sum",
    "expand_with_index",
]


@dataclass(frozen=True)
class QueryExpansion:
    """Options of alpha-QE / alpha-DBA as data (see the module docstring for the formulas).

    :param n: vectors combined per query, the query included (1: no expansion).
    :param alpha: similarity exponent (alpha-QE default 3; 0: average QE).
    :param dba_k: vectors combined per database vector for DBA, itself included (1 or 0: no DBA).
    """

    n: int = 2
    alpha: float = 3.0
    dba_k: int = 0

    def __post_init__(self) -> None:
        if self.n < 1 or self.dba_k < 0 or self.alpha < 0:
            raise ValueError(f"expected n >= 1, dba_k >= 0, alpha >= 0, got {self}")


def _normalize(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, np.finfo(np.float32).tiny)


def alpha_weighted_sum(
    centers: npt.ArrayLike, neighbours: npt.ArrayLike, alpha: float, valid: npt.NDArray[np.bool_] | None = None
) -> npt.NDArray[np.float32]:
    """normalize(c + sum_j max(c^T y_j, 0)^alpha y_j) for each row: the common step of alpha-QE and alpha-DBA.

    :param centers: (M, D) vectors (queries, or database vectors for DBA), weight 1 each.
    :param neighbours: (M, K, D) their neighbours' vectors.
    :param alpha: similarity exponent.
    :param valid: optional (M, K) bool; False neighbours are left out (e.g. missing results).
    :return: (M, D) float32 L2-normalized rows.
    """
    c = np.asarray(centers, dtype=np.float32)
    y = np.asarray(neighbours, dtype=np.float32)
    if c.ndim != 2 or y.ndim != 3 or y.shape[0] != c.shape[0] or y.shape[2] != c.shape[1]:
        raise ValueError(f"expected centers (M, D) and neighbours (M, K, D), got {c.shape} and {y.shape}")
    sims = np.einsum("mkd,md->mk", y, c)
    weights = np.maximum(sims, 0.0) ** np.float32(alpha)
    if valid is not None:
        weights = np.where(valid, weights, 0.0).astype(np.float32)
    return _normalize(c + np.einsum("mk,mkd->md", weights, y))


def alpha_qe(
    queries: npt.ArrayLike,
    database: npt.NDArray,
    *,
    n: int = 2,
    alpha: float = 3.0,
    ranks: npt.ArrayLike | None = None,
) -> npt.NDArray[np.float32]:
    """alpha-QE (Radenovic et al. PAMI 2018): each query replaced by normalize(sum of itself and its top
    n-1 database vectors weighted by similarity^alpha); module docstring for the exact rule.

    :param queries: (Q, D) query vectors, L2-normalized.
    :param database: (N, D) database vectors (float32/float16, may be memory-mapped).
    :param n: vectors combined, the query included (n = 1 returns the normalized queries).
    :param alpha: similarity exponent (default 3).
    :param ranks: optional (Q, >= n-1) database row positions, best first, from a first search (-1 =
        no result); default: exact inner-product search of ``database``.
    :return: (Q, D) float32 expanded queries, L2-normalized.
    """
    q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n == 1 or len(database) == 0:
        return _normalize(q)
    if ranks is None:
        rows, _ = exact_top_k(q, database, n - 1)
    else:
        rows = np.asarray(ranks, dtype=np.int64)
        if rows.ndim != 2 or len(rows) != len(q) or rows.shape[1] < n - 1:
            raise ValueError(f"ranks must be ({len(q)}, >= {n - 1}), got shape {rows.shape}")
        rows = rows[:, : n - 1]
    valid = rows >= 0
    neighbours = np.asarray(database[np.where(valid, rows, 0).ravel()], np.float32).reshape(*rows.shape, -1)
    return alpha_weighted_sum(q, neighbours, alpha, valid)


def alpha_dba(
    database: npt.NDArray,
    *,
    k: int = 2,
    alpha: float = 3.0,
    neighbours: npt.ArrayLike | None = None,
    batch: int = 4096,
) -> npt.NDArray[np.float32]:
    """alpha-DBA (Radenovic et al. PAMI 2018): every database vector replaced by normalize(itself + its top
    k-1 *other* database vectors weighted by similarity^alpha).

    :param database: (N, D) database vectors, L2-normalized (may be memory-mapped).
    :param k: vectors combined, the vector itself included (k = 1 only normalizes).
    :param alpha: similarity exponent.
    :param neighbours: optional (N, >= k) row positions of each vector's top neighbours, best first, which
        may include the vector itself (it is skipped); default: exact search, O(N^2 D).
    :param batch: database vectors augmented at a time (bounds memory).
    :return: (N, D) float32 augmented vectors, unit rows.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = len(database)
    out = np.empty((n, database.shape[1]), np.float32)
    for start in range(0, n, batch):
        x = np.asarray(database[start : start + batch], np.float32)
        if k == 1:
            out[start : start + len(x)] = _normalize(x)
            continue
        if neighbours is None:
            rows, _ = exact_top_k(x, database, k)
        else:
            rows = np.asarray(neighbours[start : start + batch], np.int64)  # type: ignore[index]
            if rows.ndim != 2 or rows.shape[1] < k - 1:
                raise ValueError(f"neighbours must be (N, >= {k - 1}) row positions, got shape {rows.shape}")
        own = np.arange(start, start + len(x))[:, None]
        # keep the first k-1 results that are not the vector itself (stable: order kept)
        order = np.argsort(rows == own, axis=1, kind="stable")[:, : k - 1]
        rows = np.take_along_axis(rows, order, 1)
        valid = (rows >= 0) & (rows != own)
        ys = np.asarray(database[np.where(valid, rows, 0).ravel()], np.float32).reshape(*rows.shape, -1)
        out[start : start + len(x)] = alpha_weighted_sum(x, ys, alpha, valid)
    return out


def expand_with_index(
    index: GlobalIndex, queries: npt.ArrayLike, *, n: int = 2, alpha: float = 3.0
) -> npt.NDArray[np.float32]:
    """alpha-QE against a :class:`GlobalIndex` of kind ``"exact"``: search the top n-1, read their stored
    vectors, combine. Removed images never take part. Returns (Q, D) normalized expanded queries."""
    q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    if n <= 1 or len(index) == 0:
        return _normalize(q)
    ids, _ = index.search(q, n - 1)
    valid = ids >= 0
    vecs = index.vectors(ids[valid])
    neighbours = np.zeros((*ids.shape, index.dim), np.float32)
    neighbours[valid] = vecs
    return alpha_weighted_sum(q, neighbours, alpha, valid)
