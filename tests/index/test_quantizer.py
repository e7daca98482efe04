"""The fast two-level quantizer agrees with exact search; codebook training records what it did."""
from __future__ import annotations

import numpy as np
import pytest

from glocal.index.blas import blas_threads
from glocal.index.codebook import Codebook
from glocal.index.kmeans import train_codebook
from glocal.index.quantizer import agreement, build_coarse_quantizer, calibrate, fast_quantizer


def clustered(n: int, seed: int, dim: int = 32, modes: int = 300) -> np.ndarray:
    """Descriptors around fixed random modes (the modes do not depend on ``seed``), unit length."""
    means = np.random.default_rng(123).standard_normal((modes, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = means[rng.integers(0, modes, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def codebook():
    lines: list[str] = []
    cb = train_codebook(clustered(40_000, 0), 1024, iterations=4, seed=0, log=lines.append)
    assert cb.size == 1024 and cb.info["sample"] == 40_000 and cb.info["seconds"] >= 0
    assert "1024 words" in lines[0] and "40,000 descriptors" in lines[0]
    return cb


@pytest.fixture(scope="module")
def calibrated(codebook):
    """Calibrated for k = 1 (database side) and k = 5 (query side)."""
    return fast_quantizer(codebook, clustered(3000, 1), target=0.99, k=1, query_k=5, seed=0, cells=32)


def test_database_and_query_sides_are_calibrated_apart(calibrated):
    q = calibrated
    assert q.info["calibrated"] and q.info["reached"] and q.info["query"]["reached"]
    assert q.info["k"] == 1 and q.info["query"]["k"] == 5
    # each side did not fall back to probing everything; multiple assignment needs at least as many cells
    assert q.nprobe < q.cells and q.nprobe_multi is not None and q.nprobe <= q.nprobe_multi < q.cells
    assert q.probes(1) == q.nprobe and q.probes(5) == q.nprobe_multi
    assert q.with_nprobe(3).probes(5) == 3


@pytest.mark.parametrize("k", [1, 5])
def test_calibrated_quantizer_agrees_with_exact(calibrated, codebook, k):
    q = calibrated
    test = clustered(3000, 2)
    got, exact = q.assign(test, k), codebook.assign(test, k)
    assert got.shape == (3000, k)
    assert agreement(got, exact) >= 0.99
    # nearest first, like the exact search
    d = ((test[:, None, :] - codebook.centroids[got]) ** 2).sum(-1)
    assert np.all(np.diff(d, axis=1) >= -1e-5)


def test_probing_every_cell_is_exact(codebook):
    q = build_coarse_quantizer(codebook, cells=16, seed=0)
    x = clustered(500, 3)
    np.testing.assert_array_equal(q.with_nprobe(16).assign(x, 3), codebook.assign(x, 3))


def test_threads_and_blas_limit_do_not_change_results(codebook):
    q = build_coarse_quantizer(codebook, cells=32, nprobe=4, seed=0)
    x = clustered(800, 4)
    one = q.assign(x, 2)
    with blas_threads(1):
        two = type(q)(q.codebook, q.coarse, q.order, q.bounds, nprobe=4, threads=2).assign(x, 2)
    np.testing.assert_array_equal(one, two)


def test_calibration_falls_back_to_exact_when_target_unreachable(codebook):
    q = calibrate(build_coarse_quantizer(codebook, cells=4, seed=0), clustered(300, 5), target=1.01)
    assert q.nprobe == q.cells and not q.info["reached"]


def test_small_codebooks_and_empty_input():
    cb = Codebook(np.eye(8, dtype=np.float32))
    q = build_coarse_quantizer(cb, seed=0)  # K / 256 < 1: a single cell, i.e. exact
    assert q.cells == 1
    x = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    np.testing.assert_array_equal(q.assign(x, 3), cb.assign(x, 3))
    assert q.assign(np.zeros((0, 8), np.float32), 2).shape == (0, 2)


def test_exact_multiple_assignment_is_the_k_nearest_in_order():
    """Codebook.assign for k > 1 (repeated argmax) against a full sort of the distances; ties -> first index."""
    from glocal.index.codebook import top_k_by_repeated_argmax

    rng = np.random.default_rng(7)
    words = rng.standard_normal((300, 16)).astype(np.float32)
    x = rng.standard_normal((200, 16)).astype(np.float32)
    cb = Codebook(words, {})
    d = ((x[:, None, :] - words[None]) ** 2).sum(-1)
    for k in (2, 5, 8, 12):  # 12 goes through argpartition
        got = cb.assign(x, k)
        np.testing.assert_array_equal(np.sort(d[np.arange(200)[:, None], got], axis=1), np.sort(d, axis=1)[:, :k])
        assert np.all(np.diff(d[np.arange(200)[:, None], got], axis=1) >= 0)
    scores = np.array([[1.0, 3.0, 3.0, 2.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    idx, val = top_k_by_repeated_argmax(scores, 3)
    np.testing.assert_array_equal(idx, [[1, 2, 3], [0, 1, 2]])
    np.testing.assert_array_equal(val, [[3, 3, 2], [0, 0, 0]])
    with pytest.raises(ValueError, match="codebook size"):
        cb.assign(x, 301)


@pytest.mark.parametrize("rows_per_call", [1, 700, 10**6])
def test_assign_many_gives_each_image_the_words_it_gets_alone(codebook, rows_per_call):
    """Images quantised together (any grouping, empty images included) get the words they get one by one."""
    from glocal.index.asmk import assign_many

    q = build_coarse_quantizer(codebook, cells=32, nprobe=4, seed=0)
    sizes = [300, 0, 450, 1, 900, 0, 250]
    x = clustered(sum(sizes), 6)
    images = np.split(x, np.cumsum(sizes)[:-1])
    calls: list[int] = []

    class Counting:
        def assign(self, d, k=1):
            calls.append(len(d))
            return q.assign(d, k)

    got = assign_many(Counting(), images, k=3, rows_per_call=rows_per_call)
    assert [g.shape for g in got] == [(s, 3) for s in sizes]
    for g, im in zip(got, images):
        np.testing.assert_array_equal(g, q.assign(im, 3))
    # images are never split; groups close once they hold rows_per_call descriptors
    assert sum(calls) == sum(sizes)
    assert len(calls) == {1: 5, 700: 3, 10**6: 1}[rows_per_call]  # empty images ride along
    assert assign_many(q, [], k=2) == []
