"""Index scores equal a brute-force evaluation of the kernel formulas (ASMK, ASMK*, R-ASMK, regions, IDF)."""
from __future__ import annotations

import numpy as np
import pytest

from glocal.index.asmk import AsmkIndex, aggregate, asmk_similarity
from glocal.index.codebook import Codebook
from glocal.index.inverted_file import IndexSettings, InvertedFile
from glocal.index.regional import aggregate_rasmk, aggregate_regions


# -- brute-force oracle: the formulas with plain loops -------------------------------------------------
def word_residuals(desc: np.ndarray, centroids: np.ndarray, k: int = 1) -> dict[int, np.ndarray]:
    """V(X_c) = sum of residuals x - q_c over descriptors assigned to c (k nearest words each)."""
    out: dict[int, np.ndarray] = {}
    for x in np.asarray(desc, np.float64):
        d2 = ((centroids.astype(np.float64) - x) ** 2).sum(axis=1)
        for c in np.argsort(d2, kind="stable")[:k]:
            out[int(c)] = out.get(int(c), 0.0) + (x - centroids[c])
    return out


def nonzero(v: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    return {c: r for c, r in v.items() if np.linalg.norm(r) > 0}


def sigma(u: float, alpha: float = 3.0, tau: float = 0.0) -> float:
    return float(np.sign(u) * abs(u) ** alpha) if u > tau else 0.0


def word_similarity(a: np.ndarray, b: np.ndarray, binary: bool) -> float:
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    if binary:
        return 1.0 - 2.0 * float(np.mean((a > 0) != (b > 0)))
    return float(a @ b)


def kernel(vx: dict, vy: dict, binary: bool, weight: dict | None = None) -> float:
    """K(X, Y) = gamma(X) gamma(Y) sum_c w_c sigma(u_c); gamma = (sum_c w_c)^(-1/2), w = 1 without IDF."""
    vx, vy = nonzero(vx), nonzero(vy)
    if not vx or not vy:
        return 0.0
    w = (lambda c: 1.0) if weight is None else (lambda c: weight.get(c, 1.0))
    total = sum(w(c) * sigma(word_similarity(vx[c], vy[c], binary)) for c in set(vx) & set(vy))
    nx = sum(w(c) for c in vx)
    ny = sum(w(c) for c in vy)
    return total / np.sqrt(nx * ny) if nx > 0 and ny > 0 else 0.0


def inside(kp: np.ndarray, box: np.ndarray) -> np.ndarray:
    return (kp[:, 0] >= box[0]) & (kp[:, 0] <= box[2]) & (kp[:, 1] >= box[1]) & (kp[:, 1] <= box[3])


def regions(desc: np.ndarray, kp: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
    """Descriptors of each region, full image first."""
    return [desc] + [desc[inside(kp, b)] for b in boxes]


def rasmk_residuals(desc, kp, boxes, centroids, k: int = 1) -> dict[int, np.ndarray]:
    """V_R(c) = (1/R) sum_r V(Y_c^(r)) / ||V(Y^(r))|| (D2R eq. 8, VLAD norm of each region)."""
    regs = regions(desc, kp, boxes)
    out: dict[int, np.ndarray] = {}
    for d in regs:
        v = word_residuals(d, centroids, k)
        norm = np.sqrt(sum(float(r @ r) for r in v.values()))
        if norm == 0:
            continue
        for c, r in v.items():
            out[c] = out.get(c, 0.0) + r / norm / len(regs)
    return out


D, K = 16, 12


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    centroids = rng.standard_normal((K, D)).astype(np.float32)
    images = []
    for _ in range(9):
        n = int(rng.integers(5, 30))
        desc = rng.standard_normal((n, D)).astype(np.float32)
        kp = rng.uniform(0, 100, (n, 2)).astype(np.float32)
        boxes = np.array([[0, 0, 60, 60], [30, 20, 100, 90]], np.float32)[: int(rng.integers(0, 3))]
        images.append((desc, kp, boxes))
    query = rng.standard_normal((20, D)).astype(np.float32)
    return Codebook(centroids), images, query


@pytest.mark.parametrize("binary", [False, True])
def test_asmk_scores_match_brute_force(tmp_path, data, binary):
    cb, images, query = data
    idx = InvertedFile.create(tmp_path / "ivf", cb, IndexSettings(binary=binary))
    idx.add([aggregate(d, cb, 1, binary) for d, _, _ in images])
    q = aggregate(query, cb, 3, binary)
    got = idx.scores(q)
    vq = word_residuals(query, cb.centroids, 3)
    want = [kernel(vq, word_residuals(d, cb.centroids, 1), binary) for d, _, _ in images]
    np.testing.assert_allclose(got, want, atol=1e-5)
    # the direct pair evaluation and the in-memory index agree too
    direct = [asmk_similarity(q, aggregate(d, cb, 1, binary), D) for d, _, _ in images]
    np.testing.assert_allclose(direct, want, atol=1e-5)
    mem = AsmkIndex(cb, binary=binary)
    mem.add([aggregate(d, cb, 1, binary) for d, _, _ in images])
    np.testing.assert_allclose(mem.scores(q), want, atol=1e-5)
    idx.close()


@pytest.mark.parametrize("binary", [False, True])
def test_rasmk_scores_match_brute_force(tmp_path, data, binary):
    cb, images, query = data
    idx = InvertedFile.create(tmp_path / "ivf", cb, IndexSettings(binary=binary, aggregation="r-asmk"))
    idx.add([aggregate_rasmk(d, kp, b, cb, 1, binary) for d, kp, b in images])
    got = idx.scores(aggregate(query, cb, 2, binary))
    vq = word_residuals(query, cb.centroids, 2)
    want = [kernel(vq, rasmk_residuals(d, kp, b, cb.centroids), binary) for d, kp, b in images]
    np.testing.assert_allclose(got, want, atol=1e-5)
    idx.close()


def test_rasmk_without_boxes_is_asmk(data):
    cb, images, _ = data
    d, kp, _ = images[0]
    a = aggregate(d, cb, 1, False)
    r = aggregate_rasmk(d, kp, None, cb, 1, False)
    np.testing.assert_array_equal(a.words, r.words)
    np.testing.assert_allclose(a.codes, r.codes, atol=1e-6)


@pytest.mark.parametrize("pooling", ["max", "mean"])
@pytest.mark.parametrize("binary", [False, True])
def test_regional_search_matches_brute_force(tmp_path, data, pooling, binary):
    cb, images, query = data
    idx = InvertedFile.create(tmp_path / "ivf", cb, IndexSettings(binary=binary, aggregation="regions"))
    idx.add([aggregate_regions(d, kp, b, cb, 1, binary) for d, kp, b in images])
    assert idx.n_items == sum(1 + len(b) for _, _, b in images)
    got = idx.scores(aggregate(query, cb, 1, binary), pooling=pooling)
    vq = word_residuals(query, cb.centroids, 1)
    reduce = max if pooling == "max" else (lambda v: sum(v) / len(v))
    want = [reduce([kernel(vq, word_residuals(r, cb.centroids), binary) for r in regions(d, kp, b)])
            for d, kp, b in images]
    np.testing.assert_allclose(got, want, atol=1e-5)
    idx.close()


def test_idf_is_off_by_default_and_matches_reference_formula_when_on(tmp_path, data):
    assert IndexSettings().idf is False
    cb, images, query = data
    idx = InvertedFile.create(tmp_path / "ivf", cb, IndexSettings(binary=False, idf=True))
    idx.add([aggregate(d, cb, 1, False) for d, _, _ in images])
    got = idx.scores(aggregate(query, cb, 2, False))
    db = [word_residuals(d, cb.centroids) for d, _, _ in images]
    counts: dict[int, int] = {}
    for v in db:
        for c in v:
            counts[c] = counts.get(c, 0) + 1
    weight = {c: float(np.log(len(db) / n) ** 2) for c, n in counts.items()}
    want = [kernel(word_residuals(query, cb.centroids, 2), v, False, weight) for v in db]
    np.testing.assert_allclose(got, want, atol=1e-5)
    idx.close()
