"""Tests of the DELG shortlist re-ranking: order by (inliers, shortlist score), lazy candidates."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from glocal.records import ImageFeatures
from glocal.rerank.matching import MatcherOptions
from glocal.rerank.shortlist import Reranked, final_order, rerank
from glocal.rerank.verification import VerifierOptions


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _features(name: str, desc: np.ndarray, kp: np.ndarray) -> ImageFeatures:
    n = len(desc)
    return ImageFeatures(
        name=name,
        image_size=(1000, 1000),
        descriptors=desc,
        keypoints=kp.astype(np.float32),
        scales=np.ones(n, np.float32),
        strengths=np.ones(n, np.float32),
    )


def _scene(seed: int = 0) -> tuple[ImageFeatures, list[ImageFeatures], np.ndarray]:
    """A query and candidates sharing ``shared[i]`` features under an affine map (rest unrelated)."""
    rng = np.random.default_rng(seed)
    n, dim = 300, 64
    q_desc = _unit(rng.standard_normal((n, dim)))
    q_kp = rng.uniform(0, 1000, (n, 2))
    query = _features("query", q_desc, q_kp)
    shared = [0, 120, 40, 120, 0, 5]
    A = np.array([[0.9, 0.1, 30.0], [-0.1, 0.95, 12.0]])
    candidates = []
    for i, k in enumerate(shared):
        desc = _unit(rng.standard_normal((n, dim)))
        kp = rng.uniform(0, 1000, (n, 2))
        idx = rng.choice(n, k, replace=False)
        desc[:k] = _unit(q_desc[idx] + 0.02 * rng.standard_normal((k, dim)))
        kp[:k] = q_kp[idx] @ A[:, :2].T + A[:, 2] + rng.normal(0, 1.0, (k, 2))
        candidates.append(_features(f"db{i}", desc, kp))
    scores = np.array([0.9, 0.5, 0.8, 0.5, 0.7, 0.95])
    return query, candidates, scores


class LazyFeatures(Sequence):
    """Loads (here: builds) one candidate per access and counts the accesses."""

    def __init__(self, items: list[ImageFeatures]) -> None:
        self._items = items
        self.loads = 0

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):  # type: ignore[override]
        self.loads += 1
        return self._items[i]


def test_final_order_sorts_by_inliers_then_shortlist_score() -> None:
    inliers = [10, 30, 10, 0, 30, 10]
    scores = [0.5, 0.2, 0.9, 0.99, 0.3, 0.5]
    # 30s first (0.3 before 0.2), then 10s by score (0.9, then the 0.5 tie in position order), then 0
    np.testing.assert_array_equal(final_order(inliers, scores), [4, 1, 2, 0, 5, 3])


def test_final_order_unverified_keep_shortlist_order_after_verified() -> None:
    inliers = [3, 40, 12, 0, 15, 8]
    scores = [0.9, 0.1, 0.8, 0.95, 0.2, 0.85]
    # verified (>= 10): 40, 15, 12; then the rest by score: 0.95, 0.9, 0.85 (inliers 0, 3, 8 ignored)
    np.testing.assert_array_equal(final_order(inliers, scores, min_inliers=10), [1, 4, 2, 3, 0, 5])
    with pytest.raises(ValueError):
        final_order([1, 2], [0.1])


def test_rerank_puts_verified_candidates_first_and_breaks_ties_by_score() -> None:
    query, candidates, scores = _scene()
    lazy = LazyFeatures(candidates)
    out = rerank(query, lazy, scores)
    assert lazy.loads == len(candidates)  # each candidate read once
    assert all(isinstance(r, Reranked) for r in out)
    positions = [r.position for r in out]
    # 120 shared features twice (scores 0.5 tie -> position 1 first), then 40, then 5, then none
    assert positions[:3] == [1, 3, 2]
    assert positions[3] == 5
    assert positions[4:] == [0, 4]  # no shared features: shortlist order (0.9 before 0.7)
    by_pos = {r.position: r for r in out}
    assert by_pos[1].inliers >= 0.95 * 120 and by_pos[3].inliers >= 0.95 * 120
    assert by_pos[2].inliers >= 0.95 * 40
    assert by_pos[0].inliers == 0 and by_pos[0].matches.shape == (0, 4)
    assert by_pos[1].matches.shape == (by_pos[1].inliers, 4) and by_pos[1].matches.dtype == np.float32
    assert by_pos[1].shortlist_score == 0.5 and by_pos[1].score == by_pos[1].inliers


def test_rerank_min_inliers_and_determinism() -> None:
    query, candidates, scores = _scene(seed=1)
    out = rerank(query, candidates, scores, min_inliers=20)
    positions = [r.position for r in out]
    # 5 shared features is below 20: candidate 5 drops to shortlist order (its 0.95 is the top score)
    assert positions == [1, 3, 2, 5, 0, 4]
    assert [r.verified for r in out] == [True, True, True, False, False, False]
    assert out[3].score == 0.95
    again = rerank(query, candidates, scores, min_inliers=20)
    assert [(r.position, r.inliers) for r in again] == [(r.position, r.inliers) for r in out]
    for a, b in zip(out, again, strict=True):
        np.testing.assert_array_equal(a.matches, b.matches)


def test_rerank_binary_descriptors_use_hamming_matching() -> None:
    query, candidates, scores = _scene(seed=2)
    pack = lambda f: _features(f.name, np.packbits(f.descriptors > 0, axis=1), f.keypoints)  # noqa: E731
    out = rerank(pack(query), [pack(c) for c in candidates], scores)
    assert [r.position for r in out][:3] == [1, 3, 2]
    assert {r.position: r.inliers for r in out}[1] >= 0.9 * 120


def test_rerank_options_and_validation() -> None:
    query, candidates, scores = _scene(seed=3)
    out = rerank(
        query,
        candidates,
        scores,
        matcher=MatcherOptions(max_distance=1.0, ratio=0.9, mutual=True),
        verifier=VerifierOptions(model="homography", estimator="usac_accurate", seed=4),
    )
    assert [r.position for r in out][:2] == [1, 3]
    reference = rerank(query, candidates, scores, verifier=VerifierOptions.delg_reference())
    assert [r.position for r in reference] == [r.position for r in rerank(query, candidates, scores)]
    assert rerank(query, [], np.zeros(0)) == []
    with pytest.raises(ValueError, match="shortlist scores"):
        rerank(query, candidates, scores[:2])


def test_parallel_workers_give_identical_results() -> None:
    rng = np.random.default_rng(7)
    query = _features_for_tests(rng, 300)
    cands = [_features_for_tests(rng, 300) for _ in range(6)]
    # make candidate 3 a transformed copy of the query so it gets many inliers
    cands[3] = ImageFeatures("copy", (100, 100), query.descriptors.copy(), query.keypoints * 0.5 + 10,
                             query.scales, query.strengths)
    scores = rng.uniform(size=6)
    one = rerank(query, cands, scores, workers=1)
    two = rerank(query, cands, scores, workers=2)
    assert [(r.position, r.inliers) for r in one] == [(r.position, r.inliers) for r in two]
    assert one[0].position == 3 and one[0].inliers > 250


def _features_for_tests(rng: np.random.Generator, n: int) -> ImageFeatures:
    d = rng.normal(size=(n, 128)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return ImageFeatures("x", (100, 100), d, rng.uniform(0, 500, (n, 2)).astype(np.float32),
                         np.ones(n, np.float32), np.ones(n, np.float32))
