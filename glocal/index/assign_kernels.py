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


#: longest segment the kernel adds (1 + 128 rows: numpy's pairwise sum of the rest has one block, no halving);
#: longer segments (rare: a word holding more than 129 of an image's descriptors) are left to ``reduceat``
LONGEST_SEGMENT = 129


@numba.njit(nogil=True, cache=True)
def segment_residual_sums(x, centroids, rows, words, starts, out):  # noqa: ANN001, ANN202
    """``out[s] = np.add.reduceat(x[rows] - centroids[words], starts)[s]`` in float32 for every segment of at
    most :data:`LONGEST_SEGMENT` rows (the others are not written): the segment's first residual plus numpy's
    pairwise sum of the others (sequential below 8, eight accumulators up to 128), which is how ``reduceat``
    adds along the first axis (checked against it before use: :func:`glocal.index.asmk.residual_sums`)."""
    d = x.shape[1]
    total = len(rows)
    rest = np.empty(d, np.float32)
    acc = np.empty((8, d), np.float32)
    for s in range(len(starts)):
        lo = starts[s]
        hi = starts[s + 1] if s + 1 < len(starts) else total
        n = hi - lo - 1
        if n + 1 > LONGEST_SEGMENT:
            continue
        first = lo + 1
        if n < 8:
            for t in range(d):
                rest[t] = 0.0
            for i in range(first, first + n):
                r, w = rows[i], words[i]
                for t in range(d):
                    rest[t] += x[r, t] - centroids[w, t]
        else:
            for j in range(8):
                r, w = rows[first + j], words[first + j]
                for t in range(d):
                    acc[j, t] = x[r, t] - centroids[w, t]
            i = 8
            while i < n - (n % 8):
                for j in range(8):
                    r, w = rows[first + i + j], words[first + i + j]
                    for t in range(d):
                        acc[j, t] += x[r, t] - centroids[w, t]
                i += 8
            for t in range(d):
                rest[t] = ((acc[0, t] + acc[1, t]) + (acc[2, t] + acc[3, t])) + \
                    ((acc[4, t] + acc[5, t]) + (acc[6, t] + acc[7, t]))
            while i < n:
                r, w = rows[first + i], words[first + i]
                for t in range(d):
                    rest[t] += x[r, t] - centroids[w, t]
                i += 1
        r, w = rows[lo], words[lo]
        for t in range(d):
            out[s, t] = (x[r, t] - centroids[w, t]) + rest[t]
