"""ASMK and ASMK* (Tolias, Avrithis & Jegou, "Image search with selective match kernels", IJCV 2016).

For an image X and a visual word c with assigned descriptors X_c (residuals to the word's centroid q_c):

* aggregation:   V(X_c) = sum_{x in X_c} (x - q_c),   V^(X_c) = V(X_c) / ||V(X_c)||
* ASMK*:         b(X_c) = sign(V^(X_c)) (1 bit per dimension); similarity of d-bit codes u = 1 - 2 h / d
* selectivity:   sigma_alpha(u) = sign(u) |u|^alpha if u > tau else 0     (alpha = 3, tau = 0)
* kernel:        K(X, Y) = gamma(X) gamma(Y) sum_{c in C(X) & C(Y)} sigma_alpha(V^(X_c)^T V^(Y_c))
* normalisation: gamma(X) = (sum_c sigma_alpha(1))^(-1/2) = |C(X)|^(-1/2) (self-similarity per word is 1)

This module is the plain, vectorised in-memory version used by the default ``sift`` method: the database
side is concatenated into one word-sorted inverted file and a query scores every shared word at once.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np
import numpy.typing as npt

from glocal.index.codebook import Codebook
from glocal.index.kernel import block_similarity, gather, match_blocks, selectivity_table

ALPHA = 3.0
TAU = 0.0
#: numba is optional: residual sums in one pass (:mod:`glocal.index.assign_kernels`), the same float32 sums
COMPILED = importlib.util.find_spec("numba") is not None


class Quantizer(Protocol):
    """Anything that assigns descriptors to their k nearest visual words (exact or approximate)."""

    def assign(self, descriptors: npt.NDArray, k: int = 1) -> npt.NDArray[np.int64]: ...


#: descriptors quantised per call by :func:`assign_many` (about 8 images of 1,000): larger matrix products
#: per coarse cell, 18.6 -> 12 ms per image with the two-level quantizer (``benchmarks/asmk_scale.py``).
ROWS_PER_CALL = 8192


def assign_many(quantizer: Quantizer, arrays: Sequence[npt.NDArray], k: int = 1,
                rows_per_call: int = ROWS_PER_CALL) -> list[npt.NDArray[np.int64]]:
    """The k nearest words of the descriptors of several images, one (N_i, k) array per image.

    Consecutive images are concatenated into calls of at least ``rows_per_call`` descriptors (an image is
    never split), so each call does fewer, larger matrix products; every descriptor gets the words it would
    get alone.
    """
    out: list[npt.NDArray[np.int64]] = []
    group: list[npt.NDArray[np.float32]] = []
    rows = 0
    for i, a in enumerate(arrays):
        group.append(np.asarray(a, dtype=np.float32))
        rows += len(a)
        if rows < rows_per_call and i < len(arrays) - 1:
            continue
        nearest = quantizer.assign(np.concatenate(group), k=k) if rows else np.zeros((0, k), np.int64)
        out.extend(np.split(nearest, np.cumsum([len(g) for g in group])[:-1]))
        group, rows = [], 0
    return out


@dataclass(frozen=True)
class AggregatedImage:
    """One image's ASMK representation: one (normalised or binarised) residual per non-empty word.

    :param words: (W,) int32 visual word ids, sorted, unique.
    :param codes: (W, d / 8) uint8 packed sign bits for ASMK*, or (W, d) float32 unit vectors for ASMK.
    """

    words: npt.NDArray[np.int32]
    codes: npt.NDArray

    @property
    def binary(self) -> bool:
        return self.codes.dtype == np.uint8

    def __len__(self) -> int:
        return len(self.words)


def selectivity(u: npt.NDArray, alpha: float = ALPHA, tau: float = TAU) -> npt.NDArray[np.float32]:
    """sigma_alpha(u) = sign(u)|u|^alpha for u > tau, else 0 (ASMK selectivity function)."""
    u = np.asarray(u, dtype=np.float32)
    return np.where(u > tau, np.sign(u) * np.abs(u) ** alpha, 0.0).astype(np.float32)


def _compiled_sums(x: npt.NDArray[np.float32], centroids: npt.NDArray, rows: npt.NDArray[np.int64],
                   words: npt.NDArray[np.int64], starts: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
    """``np.add.reduceat(x[rows] - centroids[words], starts, axis=0)``: the numba loop for segments up to
    ``LONGEST_SEGMENT`` rows, ``reduceat`` on each longer one (the same sums: a segment's sum depends on its
    rows only)."""
    from glocal.index import assign_kernels  # lazy: numba is imported on first use

    c = np.ascontiguousarray(centroids, np.float32)
    out = np.empty((len(starts), x.shape[1]), np.float32)
    assign_kernels.segment_residual_sums(np.ascontiguousarray(x), c, rows, words, starts, out)
    ends = np.append(starts[1:], len(rows))
    for s in np.flatnonzero(ends - starts > assign_kernels.LONGEST_SEGMENT):
        seg = slice(starts[s], ends[s])
        out[s] = np.add.reduceat(x[rows[seg]] - c[words[seg]], [0], axis=0)[0]
    return out


@lru_cache(maxsize=1)
def _reduceat_order_matches() -> bool:
    """Whether the compiled residual sums add in this numpy's ``reduceat`` order (segments of 1-300 rows)."""
    rng = np.random.default_rng(0)
    x, c = rng.normal(size=(400, 16)).astype(np.float32), rng.normal(size=(50, 16)).astype(np.float32)
    rows, words = rng.integers(0, 400, 3000), rng.integers(0, 50, 3000)
    starts = np.concatenate([[0], np.cumsum(rng.integers(1, 300, 40))])
    starts = starts[starts < len(rows)]
    return bool(np.array_equal(_compiled_sums(x, c, rows, words, starts),
                               np.add.reduceat(x[rows] - c[words], starts, axis=0)))


def residual_sums(
    descriptors: npt.NDArray, nearest: npt.NDArray, centroids: npt.NDArray,
    rows: npt.NDArray | None = None, groups: npt.NDArray | None = None, compiled: bool | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Aggregated residuals V(X_c) = sum_{x in X_c} (x - q_c) per (group, word) (D2R eq. 1 notation).

    :param nearest: (N, k) word ids of every descriptor (multiple assignment: k words each).
    :param rows, groups: optional membership pairs (descriptor ``rows[i]`` belongs to group ``groups[i]``,
        e.g. a region); by default every descriptor is in group 0.
    :param compiled: numba loop (None: where numba is installed) or ``np.add.reduceat``; the same sums.
    :returns: (group, word, sums) sorted by (group, word), one row per non-empty pair.
    """
    x = np.asarray(descriptors, dtype=np.float32)
    nearest = np.asarray(nearest, dtype=np.int64)
    k = nearest.shape[1]
    if rows is None:
        rows = np.arange(len(x), dtype=np.int64)
        groups = np.zeros(len(x), dtype=np.int64)
    rows = np.asarray(rows, np.int64)
    groups = np.asarray(groups, np.int64)
    if len(rows) == 0 or k == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, x.shape[1]), np.float32)
    rows_e = np.repeat(rows, k)
    words_e = nearest[rows].reshape(-1)
    size = int(len(centroids))
    key = np.repeat(groups, k) * size + words_e
    order = np.argsort(key, kind="stable")
    key = key[order]
    starts = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
    # the same float32 sums, without the (rows x d) residual matrix
    if (COMPILED if compiled is None else compiled) and _reduceat_order_matches():
        sums = _compiled_sums(x, centroids, rows_e[order], words_e[order], starts)
    else:
        residuals = x[rows_e[order]] - np.asarray(centroids, np.float32)[words_e[order]]
        sums = np.add.reduceat(residuals, starts, axis=0)
    ukey = key[starts]
    return ukey // size, ukey % size, sums


def encode(words: npt.NDArray, sums: npt.NDArray, binary: bool) -> AggregatedImage:
    """Per-word normalisation V^ = V / ||V|| (ASMK) or its sign bits (ASMK*); empty words are dropped."""
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    keep = norms[:, 0] > 0
    words, sums, norms = np.asarray(words)[keep], sums[keep], norms[keep]
    unit = sums / norms
    codes = np.packbits(unit > 0, axis=1) if binary else unit.astype(np.float32)
    return AggregatedImage(words.astype(np.int32), codes)


def empty_image(dim: int, binary: bool) -> AggregatedImage:
    codes = np.zeros((0, dim // 8), np.uint8) if binary else np.zeros((0, dim), np.float32)
    return AggregatedImage(np.zeros(0, np.int32), codes)


def aggregate(
    descriptors: npt.NDArray, codebook: Codebook, assignments: int = 1, binary: bool = True,
    quantizer: Quantizer | None = None, nearest: npt.NDArray | None = None,
) -> AggregatedImage:
    """ASMK aggregation of one image's local descriptors (D2R eq. 1-2: V^(X_c) per non-empty word c).

    :param assignments: number of nearest words each descriptor is assigned to (multiple assignment;
        the reference HOW/FIRe setting is 1 for database images and 5 for queries).
    :param binary: ASMK* (packed sign bits) if True, ASMK (float unit residuals) otherwise.
    :param quantizer: anything with ``assign(x, k)`` (e.g. :class:`glocal.index.quantizer.CoarseQuantizer`);
        exact search over the codebook when None.
    :param nearest: (N, ``assignments``) word ids already assigned (:func:`assign_many`); replaces quantizing.
    """
    x = np.asarray(descriptors, dtype=np.float32)
    if len(x) == 0:
        return empty_image(codebook.dim, binary)
    if nearest is None:
        nearest = (quantizer or codebook).assign(x, k=assignments)  # (N, k)
    _, words, sums = residual_sums(x, nearest, codebook.centroids)
    return encode(words, sums, binary)


def code_similarity(a_codes: npt.NDArray, b_codes: npt.NDArray, dim: int) -> npt.NDArray[np.float32]:
    """Row-wise similarity of matching codes: dot product (ASMK) or 1 - 2 h / d (ASMK*)."""
    if a_codes.dtype == np.uint8:
        hamming = np.bitwise_count(np.bitwise_xor(a_codes, b_codes)).sum(axis=1, dtype=np.int32)
        return (1.0 - 2.0 * hamming / dim).astype(np.float32)
    return np.einsum("ij,ij->i", a_codes.astype(np.float32), b_codes.astype(np.float32))


def asmk_similarity(x: AggregatedImage, y: AggregatedImage, dim: int, alpha: float = ALPHA, tau: float = TAU) -> float:
    """K(X, Y) of the module docstring for one pair, normalisation included (direct evaluation)."""
    if len(x) == 0 or len(y) == 0:
        return 0.0
    common, ix, iy = np.intersect1d(x.words, y.words, assume_unique=True, return_indices=True)
    if len(common) == 0:
        return 0.0
    s = selectivity(code_similarity(x.codes[ix], y.codes[iy], dim), alpha, tau).sum()
    return float(s / np.sqrt(len(x) * len(y)))


class AsmkIndex:
    """In-memory inverted file of aggregated database images, scored with the ASMK kernel.

    ``add`` appends images; ``search`` returns the best database images for an aggregated query.
    """

    def __init__(self, codebook: Codebook, binary: bool = True, alpha: float = ALPHA, tau: float = TAU) -> None:
        self.codebook = codebook
        self.binary = binary
        self.alpha = alpha
        self.tau = tau
        self._pending: list[AggregatedImage] = []
        self._count = 0
        self._offsets = np.zeros(codebook.size + 1, np.int64)
        self._images = np.zeros(0, np.int32)
        code_width = codebook.dim // 8 if binary else codebook.dim
        self._codes = np.zeros((0, code_width), np.uint8 if binary else np.float32)
        self._gamma = np.zeros(0, np.float32)
        self._words = np.zeros(0, np.int64)
        self._bounds = np.zeros(1, np.int64)

    def __len__(self) -> int:
        return self._count + len(self._pending)

    def add(self, images: list[AggregatedImage]) -> None:
        for im in images:
            if im.binary != self.binary:
                raise ValueError(f"aggregated image is binary={im.binary} but the index is binary={self.binary}")
        self._pending.extend(images)

    def _commit(self) -> None:
        """Merge pending images into the word-sorted arrays (CSR layout: offsets per word)."""
        if not self._pending:
            return
        k = self.codebook.size
        # expand existing CSR back to per-entry words
        old_words = np.repeat(np.arange(k, dtype=np.int32), np.diff(self._offsets))
        new_words = [im.words for im in self._pending]
        new_imgs = [np.full(len(im), self._count + j, np.int32) for j, im in enumerate(self._pending)]
        words = np.concatenate([old_words, *new_words])
        imgs = np.concatenate([self._images, *new_imgs])
        codes = np.concatenate([self._codes, *[im.codes for im in self._pending]])
        order = np.argsort(words, kind="stable")
        self._images = imgs[order]
        self._codes = np.ascontiguousarray(codes[order])
        self._offsets = np.concatenate([[0], np.cumsum(np.bincount(words, minlength=k))]).astype(np.int64)
        self._words = np.flatnonzero(np.diff(self._offsets))  # non-empty words and their list bounds
        self._bounds = np.append(self._offsets[self._words], self._offsets[-1])
        sizes = np.array([len(im) for im in self._pending], np.float32)
        gamma = np.where(sizes > 0, 1.0 / np.sqrt(np.maximum(sizes, 1)), 0.0).astype(np.float32)
        self._gamma = np.concatenate([self._gamma, gamma])
        self._count += len(self._pending)
        self._pending = []

    def scores(self, query: AggregatedImage) -> npt.NDArray[np.float32]:
        """ASMK similarity of the query to every database image (gamma(query) included)."""
        self._commit()
        out = np.zeros(self._count, np.float64)
        if len(query) == 0 or self._count == 0:
            return out.astype(np.float32)
        table = selectivity_table(self.codebook.dim, self.alpha, self.tau)
        for qrows, starts, lens in match_blocks(np.asarray(query.words, np.int64), self._words, self._bounds):
            s = block_similarity(self._codes, query.codes, qrows, starts, lens, self.codebook.dim, self.alpha,
                                 self.tau, table)
            out += np.bincount(gather(self._images, starts, lens), weights=s, minlength=self._count)
        return (out * self._gamma / np.sqrt(len(query))).astype(np.float32)

    def search(self, query: AggregatedImage, top: int = 100) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """(indices, scores) of the ``top`` best database images, best first (ties by index)."""
        s = self.scores(query)
        top = min(top, len(s))
        if top == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        cand = np.argpartition(-s, top - 1)[:top] if top < len(s) else np.arange(len(s))
        order = np.lexsort((cand, -s[cand]))
        return cand[order].astype(np.int64), s[cand[order]]

    @property
    def words_per_image(self) -> npt.NDArray[np.float32]:
        """|C(x)| of every database image."""
        self._commit()
        with np.errstate(divide="ignore"):
            return np.where(self._gamma > 0, 1.0 / self._gamma**2, 0.0).round()
