"""Vectorised ASMK scoring of one query against a word-sorted block of database entries.

An inverted-file block holds, for its non-empty visual words ``words`` (sorted), the entries of word
``words[i]`` at ``bounds[i]:bounds[i + 1]``: the owning item (image or region) and its code. For a query
X and every database item Y sharing word c this computes the selective match of Tolias et al. (IJCV 2016)
as written in Detect-to-Retrieve eq. 1-2:

    sigma(u) = sign(u)|u|^alpha if u > tau else 0,  u = V^(X_c)^T V^(Y_c)  (ASMK)  or  1 - 2h/d  (ASMK*)

summed per item with one ``bincount``. The posting lists of the query's words are copied out as contiguous
slices (faster than fancy indexing), a chunk of query words at a time so that memory stays bounded; there is
no loop over database images.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from glocal.index.blas import blas_threads

#: entries gathered at once when scoring (bounds the temporary memory to ~ CHUNK x (code + 24) bytes)
CHUNK = 1 << 22


def selectivity_table(dim: int, alpha: float, tau: float) -> npt.NDArray[np.float64]:
    """sigma(1 - 2h/d) for every Hamming distance h = 0..d (ASMK* similarity of d-bit codes, eq. 2)."""
    u = 1.0 - 2.0 * np.arange(dim + 1, dtype=np.float64) / dim
    return np.where(u > tau, np.sign(u) * np.abs(u) ** alpha, 0.0)


def selective(u: npt.NDArray, alpha: float, tau: float) -> npt.NDArray[np.float64]:
    """sigma(u) of eq. 2 in float64."""
    u = np.asarray(u, dtype=np.float64)
    return np.where(u > tau, np.sign(u) * np.abs(u) ** alpha, 0.0)


def as_words64(codes: npt.NDArray[np.uint8]) -> npt.NDArray:
    """View packed codes (E, B) as (E, B / 8) uint64 when B is a multiple of 8 (faster XOR / popcount)."""
    if codes.ndim == 2 and codes.shape[1] % 8 == 0 and codes.flags.c_contiguous and codes.shape[0] > 0:
        try:
            return codes.view(np.uint64)
        except ValueError:
            return codes
    return codes


def match_blocks(
    query_words: npt.NDArray, words: npt.NDArray, bounds: npt.NDArray, chunk: int = CHUNK
) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
    """For the query words present in a block, yield (query rows, list starts, list lengths) in chunks of
    at most ~``chunk`` entries (at least one word per chunk)."""
    if len(words) == 0 or len(query_words) == 0:
        return
    pos = np.searchsorted(words, query_words)
    pos_c = np.minimum(pos, len(words) - 1)
    hit = words[pos_c] == query_words
    qrows = np.flatnonzero(hit)
    if len(qrows) == 0:
        return
    w = pos_c[hit]
    starts = np.asarray(bounds[w], np.int64)
    lens = np.asarray(bounds[w + 1], np.int64) - starts
    cum = np.cumsum(lens)
    lo = 0
    while lo < len(qrows):
        base = cum[lo - 1] if lo > 0 else 0
        hi = max(lo + 1, int(np.searchsorted(cum, base + chunk, side="right")))
        yield qrows[lo:hi], starts[lo:hi], lens[lo:hi]
        lo = hi


def gather(array: npt.NDArray, starts: npt.NDArray[np.int64], lens: npt.NDArray[np.int64]) -> npt.NDArray:
    """Concatenation of ``array[s:s + l]`` for every posting list (contiguous copies, faster than fancy
    indexing of the same rows)."""
    if len(starts) == 0:
        return array[:0]
    return np.concatenate([array[s:s + n] for s, n in zip(starts.tolist(), lens.tolist())])


def block_similarity(
    db_codes: npt.NDArray, query_codes: npt.NDArray, qrows: npt.NDArray[np.int64], starts: npt.NDArray[np.int64],
    lens: npt.NDArray[np.int64], dim: int, alpha: float, tau: float, table: npt.NDArray[np.float64] | None = None,
) -> npt.NDArray[np.float64]:
    """sigma(similarity) of every entry of the given posting lists with its query word's code, in list order:
    dot product of unit residuals (ASMK) or 1 - 2h/d with h the Hamming distance (ASMK*)."""
    if db_codes.dtype == np.uint8:
        a = as_words64(db_codes)
        b = as_words64(np.ascontiguousarray(query_codes))
        if a.dtype != b.dtype:
            a, b = db_codes, np.ascontiguousarray(query_codes)
        bits = np.bitwise_count(gather(a, starts, lens) ^ np.repeat(b[qrows], lens, axis=0))
        if bits.shape[1] == 2 and dim < 256:
            h = bits[:, 0] + bits[:, 1]
        else:
            h = bits.sum(axis=1, dtype=np.int32)
        tab = selectivity_table(dim, alpha, tau) if table is None else table
        return tab[h]
    # float codes (512 bytes an entry): one matrix-vector product per posting list, no copies of the lists
    u = np.empty(int(lens.sum()), np.float32)
    q = np.asarray(query_codes, np.float32)
    pos = 0
    with blas_threads(1):
        for r, s, n in zip(qrows.tolist(), starts.tolist(), lens.tolist()):
            u[pos:pos + n] = db_codes[s:s + n] @ q[r]
            pos += n
    return selective(u, alpha, tau)


def take_rows(codes: npt.NDArray, order: npt.NDArray[np.int64]) -> npt.NDArray:
    """``codes[order]``; packed codes are moved as uint64 words with ``np.take`` (about 2x faster)."""
    c = np.ascontiguousarray(codes)
    if c.dtype == np.uint8 and c.ndim == 2 and c.shape[1] % 8 == 0 and len(c):
        return np.take(c.view(np.uint64), order, axis=0).view(np.uint8)
    return np.take(c, order, axis=0)
