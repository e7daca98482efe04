"""Visual-word codebooks: the :class:`Codebook` record and exact (multiple) assignment of descriptors to words.

Training lives in :mod:`glocal.index.kmeans` (:func:`~glocal.index.kmeans.train_codebook`), fast approximate
assignment in :mod:`glocal.index.quantizer`; this module imports neither.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import numpy.typing as npt

#: up to this many nearest words, k passes of argmax beat argpartition + sort (4096 words, k = 5:
#: 8.7 vs 33.5 ms for 2,000 descriptors here; k = 10 / 16: 55 / 82 vs 459 / 414 ms, loaded machine, same words)
REPEATED_ARGMAX_K = 16
#: numba is optional: :func:`glocal.index.assign_kernels.top_k_rows` gives the same words in one pass per row
COMPILED = importlib.util.find_spec("numba") is not None


@lru_cache(maxsize=1)
def _kernels():  # noqa: ANN202
    from glocal.index import assign_kernels  # lazy: numba is imported on the first compiled call

    return assign_kernels


def top_k_by_repeated_argmax(scores: npt.NDArray[np.float32], k: int
                             ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """(N, k) column indices of each row's k largest scores, largest first, the first index on ties, and
    those scores. Overwrites the chosen entries of ``scores`` with -inf; ``k`` <= the number of columns."""
    rows = np.arange(len(scores))
    idx = np.empty((len(scores), k), np.int64)
    val = np.empty((len(scores), k), np.float32)
    for i in range(k):
        j = np.argmax(scores, axis=1)
        idx[:, i] = j
        val[:, i] = scores[rows, j]
        scores[rows, j] = -np.inf
    return idx, val


@dataclass(frozen=True)
class Codebook:
    """k visual words (centroids) in descriptor space.

    :param centroids: (k, d) float32.
    :param info: how it was trained (sample size, iterations, seed, seconds).
    """

    centroids: npt.NDArray[np.float32]
    info: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def assign(self, descriptors: npt.NDArray, k: int = 1, chunk: int | None = None,
               compiled: bool | None = None) -> npt.NDArray[np.int64]:
        """Indices (N, k) of the k nearest words of each descriptor (exact L2 search), nearest first.

        Exact search as one float32 matmul per chunk: ``argmin ||x - c||^2 = argmax (x.c - ||c||^2 / 2)``.
        The default chunk keeps the (chunk, K) score block near 128 MB (512 rows for 65,536 words).
        ``compiled`` (None: where numba is installed): for 2 <= k <= 16 the top k of each row in one pass
        (:func:`glocal.index.assign_kernels.top_k_rows`), the same words as k rounds of ``argmax``.
        """
        x = np.asarray(descriptors, dtype=np.float32)
        if not 1 <= k <= self.size:
            raise ValueError(f"k must be between 1 and the codebook size {self.size}, got {k}")
        if chunk is None:
            chunk = max(64, (1 << 25) // max(self.size, 1))
        n = len(x)
        out = np.empty((n, k), dtype=np.int64)
        c = self.centroids
        half_norms = 0.5 * np.einsum("ij,ij->i", c, c)
        fused = (COMPILED if compiled is None else compiled) and 1 < k <= REPEATED_ARGMAX_K
        for s in range(0, n, chunk):
            if fused:
                block = out[s : s + chunk]
                if _kernels().top_k_rows(x[s : s + chunk] @ c.T, half_norms, k, block):
                    continue
            sim = x[s : s + chunk] @ c.T - half_norms
            if k == 1:
                out[s : s + chunk, 0] = np.argmax(sim, axis=1)
            elif k <= REPEATED_ARGMAX_K:
                out[s : s + chunk] = top_k_by_repeated_argmax(sim, k)[0]
            else:
                part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
                order = np.argsort(-np.take_along_axis(sim, part, axis=1), axis=1, kind="stable")
                out[s : s + chunk] = np.take_along_axis(part, order, axis=1)
        return out

    def state(self) -> dict[str, npt.NDArray]:
        return {"centroids": self.centroids}
