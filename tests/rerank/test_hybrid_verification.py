"""Hybrid verification: the words verifier for every image, descriptor matching for a few (glocal.rerank.hybrid)."""
from __future__ import annotations

import numpy as np
import pytest

from glocal.records import ImageFeatures
from glocal.rerank.hybrid import add_descriptor_checks, descriptor_positions
from glocal.rerank.matching import MatcherOptions
from glocal.rerank.shortlist import Reranked
from glocal.rerank.word_matching import QueryWords, WordFeatures
from glocal.rerank.word_rerank import WordVerifierOptions, rerank_words

VOCAB = 4096


def _features(rng: np.random.Generator, name: str, desc: np.ndarray, kp: np.ndarray) -> ImageFeatures:
    n = len(desc)
    return ImageFeatures(name, (1000, 1000), desc.astype(np.float32), kp.astype(np.float32),
                         rng.uniform(2, 20, n).astype(np.float32), np.ones(n, np.float32),
                         orientations=rng.uniform(-np.pi, np.pi, n).astype(np.float32))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture()
def pair() -> tuple[ImageFeatures, list[ImageFeatures], QueryWords, list[WordFeatures]]:
    """A query, a true match (120 of its descriptors, slightly perturbed, under a similarity) whose visual words
    all differ from the query's (the quantisation failure under a viewpoint change), and a random image that
    shares many words with the query but no geometry."""
    rng = np.random.default_rng(0)
    n = 300
    q_desc = _unit(rng.normal(size=(n, 128)))
    q_kp = rng.uniform(0, 800, (n, 2))
    query = _features(rng, "q", q_desc, q_kp)
    keep = rng.permutation(n)[:120]
    angle, scale = 0.3, 1.2
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    m_kp = np.concatenate([q_kp[keep] @ rot.T + [30.0, 10.0], rng.uniform(0, 1000, (200, 2))])
    m_desc = _unit(np.concatenate([q_desc[keep] + 0.05 * rng.normal(size=(120, 128)), rng.normal(size=(200, 128))]))
    match = _features(rng, "match", m_desc, m_kp)
    other = _features(rng, "other", _unit(rng.normal(size=(320, 128))), rng.uniform(0, 1000, (320, 2)))
    q_words = np.stack([rng.permutation(2000)[:5] for _ in range(n)])  # query words in [0, 2000)
    qw = QueryWords(q_words, None, query.keypoints, query.scales, query.orientations)
    wf = [WordFeatures(rng.integers(2000, VOCAB, 320), None, match.keypoints, match.scales, match.orientations),
          WordFeatures(rng.integers(0, 2000, 320), None, other.keypoints, other.scales, other.orientations)]
    return query, [other, match], qw, [wf[1], wf[0]]


def test_hybrid_verifies_a_pair_the_words_miss(pair) -> None:
    query, feats, qw, words = pair
    scores = [0.9, 0.8]  # the random image first in the shortlist
    by_words = rerank_words(qw, words, scores, WordVerifierOptions(assignments=5), verify_min_inliers=6)
    assert not any(r.is_match for r in by_words)
    assert {r.position: r.inliers for r in by_words}[1] < 6  # no shared word: nothing to verify
    asked: list[list[int]] = []

    def candidate(positions: list[int]) -> list[ImageFeatures]:
        asked.append(positions)
        return [feats[p] for p in positions]

    hybrid = add_descriptor_checks(by_words, query, candidate, [0, 1], verify_min_inliers=6,
                                   matcher=MatcherOptions(ratio=0.9, mutual=True))
    assert asked == [[0, 1]]
    assert hybrid[0].position == 1 and hybrid[0].is_match and hybrid[0].inliers >= 100
    assert hybrid[0].matches.shape == (hybrid[0].inliers, 4)
    assert hybrid[1].position == 0 and not hybrid[1].is_match
    # only the images asked for are matched with descriptors: with position 0 alone, the match stays missed
    only_first = add_descriptor_checks(by_words, query, candidate, [0], verify_min_inliers=6,
                                       matcher=MatcherOptions(ratio=0.9, mutual=True))
    assert asked[-1] == [0] and not any(r.is_match for r in only_first)
    assert [r.position for r in only_first] == [r.position for r in by_words]


def test_the_larger_inlier_count_is_kept() -> None:
    words = [Reranked(0, 40, shortlist_score=0.5, verified=True), Reranked(1, 60, shortlist_score=0.9, verified=True)]
    rng = np.random.default_rng(3)
    same = _features(rng, "x", _unit(rng.normal(size=(50, 128))), rng.uniform(0, 500, (50, 2)))
    unrelated = _features(rng, "y", _unit(rng.normal(size=(50, 128))), rng.uniform(0, 500, (50, 2)))
    images = {0: same, 1: unrelated}
    out = add_descriptor_checks(words, same, lambda ps: [images[p] for p in ps], [0, 1])
    # image 0 matches itself by descriptors (50 inliers > its words' 40); image 1 keeps its words' 60
    assert [(r.position, r.inliers) for r in out] == [(1, 60), (0, 50)]
    assert out[1].putative == 50 and out[1].matches.shape == (50, 4)
    none = add_descriptor_checks(words, same, lambda ps: [], [])
    assert [(r.position, r.inliers) for r in none] == [(1, 60), (0, 40)]


def test_descriptor_positions_pick_rules() -> None:
    results = [Reranked(p, inl, shortlist_score=1 - p / 10) for p, inl in ((3, 30), (0, 2), (2, 7), (1, 9), (4, 1))]
    assert descriptor_positions(results, 3) == [0, 1, 2]
    assert descriptor_positions(results, 3, "unverified", verify_min_inliers=8) == [0, 2, 4]
    assert descriptor_positions(results, 0) == []
    with pytest.raises(ValueError, match="verify_min_inliers"):
        descriptor_positions(results, 2, "unverified")
