"""The numba loops of word assignment and ASMK aggregation give the array code's results bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

from glocal.index.asmk import _reduceat_order_matches, residual_sums
from glocal.index.codebook import Codebook

pytest.importorskip("numba")


def _data(seed: int, n: int = 700, words: int = 300, dim: int = 32) -> tuple[np.ndarray, Codebook]:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(words, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    c[7] = c[3]  # two identical words: equal scores, the first column must win
    c[11] = c[3]
    x = (c[rng.integers(0, words, n)] + rng.normal(0, 0.7, (n, dim))).astype(np.float32)
    x[:5] = c[3]  # exactly on the duplicated words
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x, Codebook(c)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k", [2, 3, 5, 10, 16])
def test_compiled_top_k_equals_repeated_argmax(seed: int, k: int) -> None:
    x, cb = _data(seed)
    ref = cb.assign(x, k=k, compiled=False)
    new = cb.assign(x, k=k, compiled=True)
    np.testing.assert_array_equal(ref, new)
    assert list(new[0, :3]) == [3, 7, 11][:k]  # ties: earlier word first
    np.testing.assert_array_equal(cb.assign(x, k=k, chunk=64, compiled=True), ref)


def test_compiled_top_k_falls_back_on_nan() -> None:
    x, cb = _data(0)
    x[10] = np.nan
    np.testing.assert_array_equal(cb.assign(x, k=5, compiled=True), cb.assign(x, k=5, compiled=False))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k", [1, 5, 10])
def test_compiled_residual_sums_equal_reduceat(seed: int, k: int) -> None:
    assert _reduceat_order_matches()  # else the compiled path falls back and this test compares numpy to itself
    x, cb = _data(seed, dim=128)
    nearest = cb.assign(x, k=k, compiled=False)
    ref = residual_sums(x, nearest, cb.centroids, compiled=False)
    new = residual_sums(x, nearest, cb.centroids, compiled=True)
    for a, b in zip(ref, new):
        np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(seed)
    rows, groups = rng.integers(0, len(x), 900), rng.integers(0, 6, 900)  # regions: overlapping groups
    ref = residual_sums(x, nearest, cb.centroids, rows, groups, compiled=False)
    new = residual_sums(x, nearest, cb.centroids, rows, groups, compiled=True)
    for a, b in zip(ref, new):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("burst", [7, 8, 9, 100, 128, 129, 130, 300])
def test_compiled_residual_sums_on_bursts(burst: int) -> None:
    """A word holding ``burst`` descriptors: every pairwise-sum regime (sequential, 8 accumulators, the
    segments left to reduceat) gives reduceat's sums."""
    x, cb = _data(5, n=400, dim=128)
    rng = np.random.default_rng(burst)
    x[:burst] = cb.centroids[9] + rng.normal(0, 0.05, (burst, 128)).astype(np.float32)
    nearest = cb.assign(x, k=2, compiled=False)
    assert (nearest[:, 0] == 9).sum() >= burst
    for a, b in zip(residual_sums(x, nearest, cb.centroids, compiled=False),
                    residual_sums(x, nearest, cb.centroids, compiled=True)):
        np.testing.assert_array_equal(a, b)
