"""The numba loops of the words verifier give the array code's results bit for bit (generated data)."""
from __future__ import annotations

import numpy as np
import pytest

from glocal.rerank.similarity_ransac import SCALE_FACTOR, ratio_bounds, verify_batch
from glocal.rerank.word_matching import QueryWords, WordFeatures, tentative_correspondences

pytest.importorskip("numba")

VOCAB = 64


def _scene(seed: int, n_cand: int = 12, n_q: int = 300, codes: bool = True, angles: bool = True
           ) -> tuple[QueryWords, list[WordFeatures]]:
    """A query and candidates: some see the query through a similarity (+ noise), others are unrelated;
    few words, so many same-word pairs, bursts and repeated features."""
    rng = np.random.default_rng(seed)
    q_kp = rng.uniform(0, 800, (n_q, 2)).astype(np.float32)
    q_scale = rng.uniform(1, 20, n_q).astype(np.float32)
    q_ori = rng.uniform(-np.pi, np.pi, n_q).astype(np.float32)
    q_words = np.stack([rng.permutation(VOCAB)[:5] for _ in range(n_q)])
    pool = rng.integers(0, 256, (4, 16), dtype=np.uint8)  # codes near a few prototypes: distances 0-64 bits

    def noisy(base: np.ndarray) -> np.ndarray:
        flips = rng.random(base.shape + (8,)) < rng.uniform(0, 0.4, base.shape[:-1] + (1, 1))
        return base ^ np.packbits(flips, axis=-1)[..., 0]

    q_signs = noisy(pool[rng.integers(0, 4, (n_q, 5))])
    cands = []
    for c in range(n_cand):
        n = int(rng.integers(0, 400))
        kp = rng.uniform(0, 800, (n, 2)).astype(np.float32)
        scale = rng.uniform(1, 20, n).astype(np.float32)
        ori = rng.uniform(-np.pi, np.pi, n).astype(np.float32)
        words = rng.integers(0, VOCAB, n)
        signs = noisy(pool[rng.integers(0, 4, n)])
        if c % 3 == 0 and n:  # a true match: part of the features are the query's, moved by a similarity
            k = min(n, int(rng.integers(5, 120)))
            src = rng.choice(n_q, k, replace=c % 2 == 0)  # with replacement: repeated query features
            s, th = float(rng.choice([0.5, 1.0, 2.0, rng.uniform(0.4, 2.5)])), float(rng.uniform(-np.pi, np.pi))
            rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
            kp[:k] = (s * q_kp[src] @ rot.T + rng.uniform(-50, 50, 2) + rng.normal(0, 4, (k, 2))).astype(np.float32)
            scale[:k] = q_scale[src] * s  # scale ratios of exactly 0.5, 1 and 2 among them
            ori[:k] = (q_ori[src] + th + rng.normal(0, 0.2, k)).astype(np.float32)
            words[:k] = q_words[src, rng.integers(0, 5, k)]
            signs[:k] = q_signs[src, 0] ^ rng.integers(0, 2, (k, 16), dtype=np.uint8)
        cands.append(WordFeatures(words.astype(np.uint16), signs if codes else None, kp, scale,
                                  ori if angles else None))
    query = QueryWords(q_words, q_signs if codes else None, q_kp, q_scale, q_ori if angles else None)
    return query, cands


def _same_corr(a, b) -> None:  # noqa: ANN001
    for field in ("query", "db", "distance", "src", "dst", "scale", "bounds", "unique_query"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    assert (a.angle is None) == (b.angle is None)
    if a.angle is not None:
        np.testing.assert_array_equal(a.angle, b.angle)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("codes", "angles", "max_hamming", "assignments"),
                         [(True, True, 40, 5), (True, True, 60, 3), (False, True, None, 2), (True, False, 128, 5),
                          (True, True, None, 1)])
def test_compiled_pairs_equal_array_code(seed: int, codes: bool, angles: bool, max_hamming: int | None,
                                         assignments: int) -> None:
    query, cands = _scene(seed, codes=codes, angles=angles)
    ref = tentative_correspondences(query, cands, assignments, max_hamming, compiled=False)
    new = tentative_correspondences(query, cands, assignments, max_hamming, compiled=True)
    assert len(ref.query) > 100  # the scene gives pairs
    _same_corr(ref, new)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("hypotheses", "lo_iterations", "refine", "consistency", "angles", "min_active"),
                         [(32, 3, 1, True, True, 3), (8, 5, 3, True, True, 3), (32, 0, 1, False, True, 0),
                          (4, 3, 2, True, False, 10), (0, 3, 1, True, True, 3), (32, 3, 1, True, True, 1000)])
def test_compiled_verification_equal_array_code(seed: int, hypotheses: int, lo_iterations: int, refine: int,
                                                consistency: bool, angles: bool, min_active: int) -> None:
    query, cands = _scene(100 + seed, angles=angles)
    corr = tentative_correspondences(query, cands, 5, 48)
    active = corr.unique_query >= min_active
    kw = dict(threshold_px=20.0, hypotheses=hypotheses, lo_iterations=lo_iterations, consistency=consistency,
              active=active, refine=refine)
    ref = verify_batch(corr, compiled=False, **kw)
    new = verify_batch(corr, compiled=True, **kw)
    np.testing.assert_array_equal(ref.inliers, new.inliers)
    np.testing.assert_array_equal(ref.inlier_mask, new.inlier_mask)
    np.testing.assert_array_equal(ref.transforms, new.transforms)  # NaN where no model, on both sides
    if hypotheses and min_active <= 3 and seed % 3 == 0:
        assert ref.inliers.max() >= 5  # the planted similarity is found


def test_compiled_verification_without_active_and_empty() -> None:
    query, cands = _scene(7)
    corr = tentative_correspondences(query, cands, 5, 40)
    for c in (corr, tentative_correspondences(query, [], 5, 40)):
        ref, new = verify_batch(c, compiled=False), verify_batch(c, compiled=True)
        np.testing.assert_array_equal(ref.inliers, new.inliers)
        np.testing.assert_array_equal(ref.inlier_mask, new.inlier_mask)


def test_ratio_bounds_reproduce_the_log_test() -> None:
    bounds = ratio_bounds()
    assert bounds is not None
    lo, hi = bounds
    assert lo <= 1 / SCALE_FACTOR <= SCALE_FACTOR <= hi
    rng = np.random.default_rng(0)
    r = np.concatenate([rng.uniform(0.3, 3.0, 100_000), [lo, hi, 0.5, 2.0, 0.0, np.inf, np.nan],
                        np.nextafter(lo, 0), np.nextafter(hi, 3)], axis=None)
    with np.errstate(divide="ignore", invalid="ignore"):
        by_log = np.abs(np.log(r)) <= np.log(SCALE_FACTOR)
    np.testing.assert_array_equal(by_log, (r >= lo) & (r <= hi))
