"""Fast spatial matching: same-word correspondences, similarity hypotheses, affine local optimisation."""
from __future__ import annotations

import numpy as np
import pytest

from glocal.rerank.similarity_ransac import verify_batch
from glocal.rerank.word_matching import QueryWords, WordFeatures, tentative_correspondences
from glocal.rerank.word_rerank import WordVerifierOptions, rerank_words

VOCAB = 4096


def _query(rng: np.random.Generator, n: int = 600) -> QueryWords:
    kp = rng.uniform(0, 800, (n, 2)).astype(np.float32)
    words = np.stack([rng.permutation(VOCAB)[:3] for _ in range(n)])
    signs = rng.integers(0, 256, (n, 3, 16), dtype=np.uint8)
    return QueryWords(words, signs, kp, rng.uniform(2, 20, n).astype(np.float32),
                      rng.uniform(-np.pi, np.pi, n).astype(np.float32))


def _transformed(q: QueryWords, rng: np.random.Generator, share: float, angle: float = 0.4, scale: float = 1.3,
                 noise_features: int = 1400, flip_bits: int = 4) -> tuple[WordFeatures, int]:
    """A database image holding ``share`` of the query's features under a similarity, plus random features."""
    n = len(q.keypoints)
    keep = rng.permutation(n)[: int(share * n)]
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    kp = q.keypoints[keep] @ rot.T + np.array([40.0, -25.0]) + rng.normal(0, 1.5, (len(keep), 2))
    signs = q.signs[keep, 0].copy()
    for row in signs:  # a few bits differ, as residual codes of true matches do
        bits = np.unpackbits(row)
        bits[rng.permutation(128)[:flip_bits]] ^= 1
        row[:] = np.packbits(bits)
    kp_all = np.concatenate([kp, rng.uniform(0, 1000, (noise_features, 2))]).astype(np.float32)
    words = np.concatenate([q.words[keep, 0], rng.integers(0, VOCAB, noise_features)])
    signs_all = np.concatenate([signs, rng.integers(0, 256, (noise_features, 16), dtype=np.uint8)])
    scales = np.concatenate([q.scales[keep] * scale, rng.uniform(2, 20, noise_features)]).astype(np.float32)
    ori = np.concatenate([q.orientations[keep] + angle, rng.uniform(-np.pi, np.pi, noise_features)]).astype(np.float32)
    return WordFeatures(words, signs_all, kp_all, scales, ori), len(keep)


def _random_image(rng: np.random.Generator, n: int = 2000) -> WordFeatures:
    return WordFeatures(rng.integers(0, VOCAB, n), rng.integers(0, 256, (n, 16), dtype=np.uint8),
                        rng.uniform(0, 1000, (n, 2)).astype(np.float32), rng.uniform(2, 20, n).astype(np.float32),
                        rng.uniform(-np.pi, np.pi, n).astype(np.float32))


def test_same_word_pairs_match_a_brute_force_listing() -> None:
    rng = np.random.default_rng(0)
    q = _query(rng, 50)
    cands = [_random_image(rng, 300) for _ in range(3)]
    corr = tentative_correspondences(q, cands, assignments=2, max_hamming=None)
    for c, cand in enumerate(cands):
        want = {(i, j) for i in range(50) for j in range(300) if cand.words[j] in q.words[i, :2]}
        lo, hi = corr.bounds[c], corr.bounds[c + 1]
        assert set(zip(corr.query[lo:hi].tolist(), corr.db[lo:hi].tolist())) == want
    # the code filter keeps exactly the pairs within the Hamming threshold
    filt = tentative_correspondences(q, cands, assignments=2, max_hamming=60)
    assert 0 < len(filt.query) < len(corr.query)
    assert (filt.distance <= 60).all()


@pytest.mark.parametrize("angle", [0.0, 0.4, np.pi / 2])
def test_recovers_the_shared_features_under_rotation_and_scale(angle: float) -> None:
    rng = np.random.default_rng(1)
    q = _query(rng)
    pos, shared = _transformed(q, rng, share=0.3, angle=angle)
    negs = [_random_image(rng) for _ in range(5)]
    out = rerank_words(q, [negs[0], pos, *negs[1:]], np.linspace(1, 0.5, 6),
                       WordVerifierOptions(assignments=1, max_hamming=20), verify_min_inliers=15)
    assert out[0].position == 1 and out[0].is_match
    assert out[0].inliers >= 0.9 * shared
    assert out[0].matches.shape == (out[0].inliers, 4)
    assert all(r.inliers < 15 and not r.is_match for r in out[1:])


def test_upright_features_still_verify_unrotated_pairs() -> None:
    rng = np.random.default_rng(2)
    q = _query(rng)
    pos, shared = _transformed(q, rng, share=0.3, angle=0.0)
    q_up = QueryWords(q.words, q.signs, q.keypoints, q.scales, None)
    pos_up = WordFeatures(pos.words, pos.signs, pos.keypoints, pos.scales, None)
    res = verify_batch(tentative_correspondences(q_up, [pos_up], 1, 20))
    assert res.inliers[0] >= 0.9 * shared


def test_early_stop_skips_candidates_that_cannot_reach_the_threshold() -> None:
    rng = np.random.default_rng(3)
    q = _query(rng)
    pos, _ = _transformed(q, rng, share=0.3)
    weak = WordFeatures(pos.words[:5], pos.signs[:5], pos.keypoints[:5], pos.scales[:5], pos.orientations[:5])
    full = rerank_words(q, [weak, pos], [1.0, 0.5], WordVerifierOptions(max_hamming=20))
    early = rerank_words(q, [weak, pos], [1.0, 0.5], WordVerifierOptions(max_hamming=20), min_inliers=10)
    assert {r.position: r.inliers for r in full}[0] == 5
    assert {r.position: r.inliers for r in early}[0] == 0  # bound 5 < 10: not verified
    assert [r.position for r in early] == [1, 0]


def test_deterministic_and_empty_inputs() -> None:
    rng = np.random.default_rng(4)
    q = _query(rng)
    pos, _ = _transformed(q, rng, share=0.2)
    a = rerank_words(q, [pos, _random_image(rng)], [0.1, 0.9])
    b = rerank_words(q, [pos, _random_image(np.random.default_rng(rng.integers(9)))], [0.1, 0.9])
    assert a[0].inliers == b[0].inliers and np.array_equal(a[0].matches, b[0].matches)
    empty = WordFeatures(np.zeros(0, np.int64), np.zeros((0, 16), np.uint8), np.zeros((0, 2), np.float32),
                         np.zeros(0, np.float32), np.zeros(0, np.float32))
    out = rerank_words(q, [empty], [1.0])
    assert out[0].inliers == 0 and out[0].matches.shape == (0, 4)
    assert rerank_words(q, [], []) == []


def test_refining_more_hypotheses_never_finds_fewer_inliers() -> None:
    rng = np.random.default_rng(5)
    q = _query(rng)
    cands = [_transformed(q, rng, share=s_, angle=0.3)[0] for s_ in (0.05, 0.1, 0.3)] + [_random_image(rng)]
    corr = tentative_correspondences(q, cands, 1, 40)
    one, three = verify_batch(corr, refine=1), verify_batch(corr, refine=3)
    assert (three.inliers >= one.inliers).all() and one.inliers[2] > 100
    for res in (one, three):  # the mask holds exactly the counted one-to-one inliers
        assert [int(res.inlier_mask[corr.bounds[c]:corr.bounds[c + 1]].sum()) for c in range(4)] == res.inliers.tolist()


@pytest.mark.parametrize("width", [16, 5])
def test_pair_hamming_distances_are_the_bit_counts(width: int) -> None:
    from glocal.rerank.word_matching import _hamming_pairs

    rng = np.random.default_rng(4)
    a, b = rng.integers(0, 256, (40, width), dtype=np.uint8), rng.integers(0, 256, (70, width), dtype=np.uint8)
    ia, ib = rng.integers(0, 40, 500), rng.integers(0, 70, 500)
    want = [int(np.unpackbits(a[i] ^ b[j]).sum()) for i, j in zip(ia, ib)]
    assert _hamming_pairs(a, b, ia, ib).tolist() == want
