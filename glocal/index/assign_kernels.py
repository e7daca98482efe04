"""numba loops of exact word assignment and ASMK aggregation: the array code's results bit for bit.

Imported on first use (numba takes ~0.6 s to import; ``cache=True`` compiles once per machine).

* :func:`top_k_rows`: each row's ``k`` largest ``products - half_norms`` (float32, as
  :meth:`glocal.index.codebook.Codebook.assign` computes them), largest first, the first column on ties: what
  ``k`` rounds of ``argmax`` give, in one pass over the row instead of ``k`` (and no score matrix written).
* :func:`segment_residual_sums`: ``np.add.reduceat(x[rows] - c[words], starts)`` in float32, the rows of a
  segment added in the order ``reduceat`` adds them, without the (rows x d) residual matrix.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def top_k_rows(products, half_norms, k, out):  # noqa: ANN001, ANN202
    """``out[i]``: the columns of row i's ``k`` largest ``products[i] - half_norms``; returns False (out
    unusable) when a score is NaN or -inf, where the rules of repeated ``argmax`` differ."""
    n, m = products.shape
    vals = np.empty(k, np.float32)
    for i in range(n):
        filled = 0
        for j in range(m):
            v = products[i, j] - half_norms[j]
            if v != v or v == -np.inf:
                return False
            if filled == k and not v > vals[k - 1]:
                continue
            p = filled if filled < k else k - 1  # the new entry goes after every entry >= it (ties: earlier column)
            while p > 0 and vals[p - 1] < v:
                if p < k:
                    vals[p] = vals[p - 1]
                    out[i, p] = out[i, p - 1]
                p -= 1
            vals[p] = v
            out[i, p] = j
            if filled < k:
                filled += 1
    return True


@numba.njit(nogil=True, cache=True)
def _pairwise(x, centroids, rows, words, lo, n):  # noqa: ANN001, ANN202
    """numpy's pairwise float32 sum of the residuals ``lo .. lo + n - 1`` (per column, as its strided
    reduction loop adds them: sequential below 8, eight accumulators up to 128, halves above)."""
    d = x.shape[1]
    res = np.zeros(d, np.float32)
    if n < 8:
        for i in range(lo, lo + n):
            for t in range(d):
                res[t] += x[rows[i], t] - centroids[words[i], t]
        return res
    if n <= 128:
        acc = np.empty((8, d), np.float32)
        for j in range(8):
            for t in range(d):
                acc[j, t] = x[rows[lo + j], t] - centroids[words[lo + j], t]
        i = 8
        while i < n - (n % 8):
            for j in range(8):
                r, w = rows[lo + i + j], words[lo + i + j]
                for t in range(d):
                    acc[j, t] += x[r, t] - centroids[w, t]
            i += 8
        for t in range(d):
            res[t] = ((acc[0, t] + acc[1, t]) + (acc[2, t] + acc[3, t])) + \
                ((acc[4, t] + acc[5, t]) + (acc[6, t] + acc[7, t]))
        while i < n:
            r, w = rows[lo + i], words[lo + i]
            for t in range(d):
                res[t] += x[r, t] - centroids[w, t]
            i += 1
        return res
    n2 = n // 2
    n2 -= n2 % 8
    a = _pairwise(x, centroids, rows, words, lo, n2)
    b = _pairwise(x, centroids, rows, words, lo + n2, n - n2)
    for t in range(d):
        res[t] = a[t] + b[t]
    return res


@numba.njit(nogil=True, cache=True)
def segment_residual_sums(x, centroids, rows, words, starts, out):  # noqa: ANN001, ANN202
    """``out[s] = np.add.reduceat(x[rows] - centroids[words], starts)[s]`` in float32: the segment's first
    residual plus the pairwise sum of the others (:func:`_pairwise`), which is how ``reduceat`` adds along
    the first axis (checked against it before use: :func:`glocal.index.asmk.residual_sums`)."""
    d = x.shape[1]
    n = len(rows)
    for s in range(len(starts)):
        lo = starts[s]
        hi = starts[s + 1] if s + 1 < len(starts) else n
        rest = _pairwise(x, centroids, rows, words, lo + 1, hi - lo - 1)
        r, w = rows[lo], words[lo]
        for t in range(d):
            out[s, t] = (x[r, t] - centroids[w, t]) + rest[t]
