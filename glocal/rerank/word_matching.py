"""Tentative correspondences from shared visual words, for a whole shortlist at once (no descriptor matching).

Fast spatial matching (Philbin et al., CVPR 2007, sec. 3): a query feature and a database feature are a
tentative correspondence when they are quantised to the same visual word; the query's words are known from
the first stage, the database's are stored at index time, so no descriptor distance is computed per pair.
A small codebook (4,096 words) puts ~0.5 database features of an image in each word at random, so most
same-word pairs are wrong; each feature therefore also carries the sign bits of its residual to its word,
``b(x) = sign(x - q_c)`` (the binarisation of ASMK*, Tolias et al., ICCV 2013, applied to single features,
in the spirit of Hamming embedding, Jegou et al., ECCV 2008), and a pair is kept only when the Hamming
distance of the two codes is at most ``max_hamming`` bits (128-D: 128 = no filter).

All candidates are processed together: the query's (word, feature) entries are sorted by word once, every
database feature of every candidate finds its word's query entries by binary search, and the pairs are
expanded with ``np.repeat``; pairs come out grouped by candidate, in shortlist order. Where numba is installed
(``compiled``), :func:`glocal.rerank.word_kernels.word_pairs` walks the same pairs and filters them in one loop,
without the arrays of all same-word pairs: the same correspondences in the same order.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Correspondences", "QueryWords", "WordFeatures", "tentative_correspondences"]

#: numba is optional: without it the array code runs (same result)
COMPILED = importlib.util.find_spec("numba") is not None


@dataclass(frozen=True)
class WordFeatures:
    """One database image's local features as visual words with their geometry.

    :param words: (N,) visual word of each feature (its nearest).
    :param signs: (N, B) uint8 packed sign bits of each feature's residual to its word, or None.
    :param keypoints: (N, 2) float32 x, y in original pixels.
    :param scales: (N,) float32 scale in original pixels.
    :param orientations: (N,) float32 radians, or None (upright features: the gravity-vector assumption).
    """

    words: npt.NDArray
    signs: npt.NDArray[np.uint8] | None
    keypoints: npt.NDArray[np.float32]
    scales: npt.NDArray[np.float32]
    orientations: npt.NDArray[np.float32] | None = None

    def __len__(self) -> int:
        return len(self.words)


@dataclass(frozen=True)
class QueryWords:
    """The query's features with their ``k`` nearest words (multiple assignment), nearest first.

    :param words: (N, k) word ids; :param signs: (N, k, B) uint8 residual sign bits to each word, or None.
    """

    words: npt.NDArray
    signs: npt.NDArray[np.uint8] | None
    keypoints: npt.NDArray[np.float32]
    scales: npt.NDArray[np.float32]
    orientations: npt.NDArray[np.float32] | None = None


@dataclass(frozen=True)
class Correspondences:
    """Tentative correspondences of a shortlist, grouped by candidate (``bounds[c]:bounds[c + 1]``).

    :param query, db: (T,) feature indices in the query and in the candidate.
    :param distance: (T,) Hamming distance of the residual codes (0 without codes).
    :param src, dst: (T, 2) float64 query and database keypoints.
    :param scale: (T,) database scale / query scale.
    :param angle: (T,) database orientation - query orientation (radians), or None (upright).
    :param bounds: (C + 1,) int64 start of each candidate's pairs.
    :param unique_query: (C,) number of distinct query features among each candidate's pairs (an upper bound
        of its one-to-one inlier count).
    """

    query: npt.NDArray[np.int64]
    db: npt.NDArray[np.int64]
    distance: npt.NDArray[np.int64]
    src: npt.NDArray[np.float64]
    dst: npt.NDArray[np.float64]
    scale: npt.NDArray[np.float64]
    angle: npt.NDArray[np.float64] | None
    bounds: npt.NDArray[np.int64]
    unique_query: npt.NDArray[np.int64]

    @property
    def counts(self) -> npt.NDArray[np.int64]:
        return np.diff(self.bounds)

    @property
    def candidate(self) -> npt.NDArray[np.int64]:
        """(T,) candidate of every pair."""
        return np.repeat(np.arange(len(self.bounds) - 1), self.counts)


def _hamming(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
    """Row-wise Hamming distance of packed codes (as 64-bit words when the width allows)."""
    if a.shape[1] % 8 == 0:
        a, b = a.view(np.uint64), b.view(np.uint64)
    return np.bitwise_count(np.bitwise_xor(a, b)).sum(axis=1, dtype=np.int64)


def _hamming_pairs(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8], rows_a: npt.NDArray[np.int64],
                   rows_b: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Hamming distances of the pairs (``a[rows_a[i]]``, ``b[rows_b[i]]``) of packed codes: 64-bit columns are
    gathered one at a time (1-D gathers; gathering whole 16-byte rows was 6-7x slower for ~1M pairs)."""
    if a.shape[1] % 8:
        return _hamming(a[rows_a], b[rows_b])
    a64, b64 = np.ascontiguousarray(a).view(np.uint64), np.ascontiguousarray(b).view(np.uint64)
    out = np.zeros(len(rows_a), np.int64)
    for j in range(a64.shape[1]):
        out += np.bitwise_count(np.bitwise_xor(a64[:, j][rows_a], b64[:, j][rows_b]))
    return out


def tentative_correspondences(query: QueryWords, candidates: Sequence[WordFeatures], assignments: int = 1,
                              max_hamming: int | None = None, compiled: bool | None = None) -> Correspondences:
    """Same-word pairs between the query (its first ``assignments`` words per feature) and every candidate,
    kept when their residual codes differ in at most ``max_hamming`` bits (None: all kept); ``compiled``: the
    numba loop (None: where numba is installed; False: the array code; same result).

    A query feature meets a database feature at most once (its ``assignments`` words are distinct and a
    database feature has one word).
    """
    a = max(1, min(int(assignments), query.words.shape[1]))
    n_q = len(query.keypoints)
    qw = np.asarray(query.words[:, :a], np.int64).reshape(-1)
    order = np.argsort(qw, kind="stable")
    qw_sorted = qw[order]
    q_feature = (order // a).astype(np.int64)
    use_codes = max_hamming is not None and query.signs is not None
    q_codes = query.signs[:, :a].reshape(n_q * a, -1)[order] if use_codes else None

    sizes = np.array([len(c) for c in candidates], np.int64)
    if len(candidates) and sizes.sum():
        db_words = np.concatenate([c.words for c in candidates]).astype(np.int64)
    else:
        db_words = np.zeros(0, np.int64)
    # each word's run in the sorted query entries, by table lookup (a binary search per feature was 10x slower)
    vocab = int(max(qw_sorted.max(initial=-1), db_words.max(initial=-1))) + 1
    word_count = np.bincount(qw_sorted, minlength=vocab)
    word_start = np.cumsum(word_count) - word_count
    db_codes = None
    if use_codes and len(db_words):
        db_codes = np.concatenate([c.signs if c.signs is not None else _no_codes(c, q_codes) for c in candidates])
    width = q_codes.shape[1] if q_codes is not None else 8
    if (COMPILED if compiled is None else compiled) and width % 8 == 0:
        rep, qpos, distance = _compiled_pairs(db_words, word_start, word_count, q_codes, db_codes, max_hamming)
    else:
        lo = word_start[db_words]
        hits = word_count[db_words]
        rep = np.repeat(np.arange(len(db_words)), hits)  # the database feature (global row) of every pair
        starts = np.cumsum(hits) - hits
        qpos = lo[rep] + (np.arange(len(rep)) - starts[rep])
        distance = np.zeros(len(rep), np.int64)
        if db_codes is not None and len(rep):
            distance = _hamming_pairs(q_codes, db_codes, qpos, rep)
            keep = distance <= max_hamming
            rep, qpos, distance = rep[keep], qpos[keep], distance[keep]
    first_row = np.cumsum(sizes) - sizes
    cand_of_row = np.repeat(np.arange(len(candidates)), sizes)
    cand = cand_of_row[rep]
    q_idx = q_feature[qpos]
    db_idx = rep - first_row[cand]
    counts = np.bincount(cand, minlength=len(candidates)).astype(np.int64)
    bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def gather(field: str, dims: int) -> npt.NDArray[np.float64]:
        parts = [getattr(c, field) for c in candidates]
        rows = np.concatenate(parts).reshape(-1, dims) if parts else np.zeros((0, dims))
        return rows[rep].astype(np.float64)

    src = np.asarray(query.keypoints, np.float64)[q_idx]
    dst = gather("keypoints", 2)
    scale = gather("scales", 1)[:, 0] / np.maximum(np.asarray(query.scales, np.float64)[q_idx], 1e-6)
    angle = None
    if query.orientations is not None and all(c.orientations is not None for c in candidates):
        angle = gather("orientations", 1)[:, 0] - np.asarray(query.orientations, np.float64)[q_idx]
    seen = np.zeros((len(candidates), max(n_q, 1)), bool)
    seen[cand, q_idx] = True
    unique_query = seen.sum(axis=1).astype(np.int64)
    return Correspondences(q_idx, db_idx, distance, src, dst, scale, angle, bounds, unique_query)


def _compiled_pairs(db_words: npt.NDArray[np.int64], word_start: npt.NDArray[np.int64],
                    word_count: npt.NDArray[np.int64], q_codes: npt.NDArray[np.uint8] | None,
                    db_codes: npt.NDArray[np.uint8] | None, max_hamming: int | None
                    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(rows, qpos, distance) from :func:`glocal.rerank.word_kernels.word_pairs` (codes as 64-bit words)."""
    from glocal.rerank.word_kernels import word_pairs  # lazy: numba is imported on the first compiled query

    total = int(word_count[db_words].sum()) if len(db_words) else 0
    if db_codes is None or q_codes is None:
        q64 = db64 = np.zeros((1, 1), np.uint64)
    else:
        q64, db64 = np.ascontiguousarray(q_codes).view(np.uint64), np.ascontiguousarray(db_codes).view(np.uint64)
    use = db_codes is not None and q_codes is not None and max_hamming is not None
    return word_pairs(np.ascontiguousarray(db_words, np.int64), word_start.astype(np.int64),
                      word_count.astype(np.int64), q64, db64, use, int(max_hamming) if use else 0, total)


def _no_codes(c: WordFeatures, like: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Codes that pass any threshold are impossible to fake: a candidate without codes fails loudly."""
    raise ValueError(f"a candidate has no residual codes (signs) but the query has {like.shape[1] * 8}-bit codes")
