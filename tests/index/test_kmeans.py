"""Approximate k-means (two-level assignment) against faiss's exact Lloyd iterations, and its pieces."""
from __future__ import annotations

import numpy as np
import pytest

from glocal.index.codebook import Codebook
from glocal.index.kmeans import approximate_kmeans, split_for_empty, train_codebook, word_means


def clustered(n: int, seed: int, dim: int = 16, modes: int = 400) -> np.ndarray:
    means = np.random.default_rng(5).standard_normal((modes, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    return means[rng.integers(0, modes, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)


def mse(centroids: np.ndarray, x: np.ndarray) -> float:
    nearest = Codebook(centroids).assign(x)[:, 0]
    return float(((x - centroids[nearest]) ** 2).sum(1).mean())


def test_word_means_and_counts_equal_a_direct_loop() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 4)).astype(np.float32)
    words = rng.integers(0, 7, 500)
    words[words == 3] = 2  # word 3 stays empty
    means, counts = word_means(x, words, 8)
    for w in range(8):
        members = x[words == w]
        assert counts[w] == len(members)
        np.testing.assert_allclose(means[w], members.mean(0) if len(members) else 0.0, atol=1e-6)


def test_empty_words_are_reseeded_by_splitting_the_most_populated() -> None:
    centroids = np.array([[1.0, 2.0], [0.0, 0.0], [5.0, 5.0], [0.0, 0.0]])
    counts = np.array([10, 0, 40, 0])
    assert split_for_empty(centroids, counts, np.random.default_rng(0)) == 2
    # word 2 (40 points) is split with word 1 (20 each), then word 1 (first of the ties) with word 3
    assert counts.tolist() == [10, 10, 20, 10]
    assert np.allclose(centroids[1:], [5.0, 5.0], rtol=0.01) and len({tuple(c) for c in centroids}) == 4
    assert np.allclose(centroids[0], [1.0, 2.0])


def test_approximate_kmeans_matches_faiss_error() -> None:
    x, test = clustered(60_000, 0), clustered(5_000, 1)
    lines: list[str] = []
    exact = train_codebook(x, 1024, iterations=6, seed=0, method="faiss")
    approx = train_codebook(x, 1024, iterations=6, seed=0, method="approximate", log=lines.append)
    assert exact.info["method"] == "faiss" and approx.info["method"] == "approximate"
    assert approx.info["size"] == 1024 and approx.centroids.shape == (1024, 16)
    assert 1 <= approx.info["nprobe"] < approx.info["cells"] == 1024 // 256  # calibrated: not every cell
    assert "approximate k-means" in lines[0]
    e_exact, e_approx, e_init = mse(exact.centroids, test), mse(approx.centroids, test), mse(x[:1024], test)
    assert e_approx < 0.75 * e_init
    assert e_approx == pytest.approx(e_exact, rel=0.03)


def test_error_falls_and_is_recorded_per_iteration() -> None:
    x = clustered(20_000, 2)
    centroids, run = approximate_kmeans(x, 256, iterations=4, seed=1)
    errors = [h["mse"] for h in run["history"]]
    assert len(errors) == 4 and all(b <= a * 1.001 for a, b in zip(errors, errors[1:]))
    assert run["cells"] == 1 or run["nprobe"] <= run["cells"]
    same, _ = approximate_kmeans(x, 256, iterations=4, seed=1)
    np.testing.assert_array_equal(centroids, same)  # seeded
    with pytest.raises(ValueError, match="k-means needs"):
        approximate_kmeans(x[:10], 20)
    with pytest.raises(ValueError, match="method must be"):
        train_codebook(x, 64, method="hnsw")


@pytest.mark.parametrize("method", ["faiss", "approximate"])
def test_progress_is_reported_once_per_iteration(method: str) -> None:
    ticks: list[int] = []
    train_codebook(clustered(8_000, 3), 64, iterations=3, method=method, on_iteration=lambda: ticks.append(1))
    assert len(ticks) == 3
