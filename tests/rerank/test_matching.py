"""Tests of putative matching: thresholds, Lowe ratio, mutual check, Hamming distances (DELG / DELG*)."""

from __future__ import annotations

import numpy as np
import pytest

from glocal.rerank.matching import (
    MatcherOptions,
    descriptor_distances,
    hamming_distances,
    hamming_threshold_from_l2,
    match_descriptors,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _reference_matches(q, db, max_distance=None, ratio=None, mutual=False):
    """Brute force with float64 distances and Python loops, written for clarity, not speed."""
    d = np.linalg.norm(q[:, None, :].astype(np.float64) - db[None, :, :], axis=2)
    out = []
    for i in range(len(q)):
        order = np.argsort(d[i], kind="stable")
        j = order[0]
        if max_distance is not None and not d[i, j] < max_distance:
            continue
        if ratio is not None and len(order) > 1 and not d[i, j] < ratio * d[i, order[1]]:
            continue
        if mutual and np.argmin(d[:, j]) != i:
            continue
        out.append((i, j))
    return np.array(out, dtype=np.int32).reshape(-1, 2)


def test_threshold_ratio_and_mutual_on_hand_built_descriptors() -> None:
    q = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]], np.float32)
    db = np.array([[0.8, 0.6], [0.0, 1.0], [0.6, -0.8]], np.float32)
    # nearest: q0 -> db0 (0.632), q1 -> db1 (0), q2 -> db0 (0.283), q3 -> db1 (1.414)
    nn = match_descriptors(q, db)
    d = np.linalg.norm(q[:, None] - db[None], axis=2)
    np.testing.assert_array_equal(nn[:, 1], d.argmin(1))
    np.testing.assert_array_equal(nn[:, 0], np.arange(4))
    # the threshold removes q3, which is far from everything
    kept = match_descriptors(q, db, max_distance=1.0)
    assert 3 not in kept[:, 0] and len(kept) == 3
    # strictness: a match at exactly the threshold distance is rejected
    at = match_descriptors(np.array([[0.0, 0.0]], np.float32), np.array([[3.0, 4.0]], np.float32), max_distance=5.0)
    assert len(at) == 0
    # mutual: q0 and q2 both choose db0 and q2 is closer; q3 chooses db1, whose nearest is q1
    np.testing.assert_array_equal(match_descriptors(q, db, mutual=True), [[1, 1], [2, 0]])
    np.testing.assert_array_equal(match_descriptors(q, db, mutual=True), _reference_matches(q, db, mutual=True))


def test_ratio_test_rejects_ambiguous_match() -> None:
    q = np.array([[0.0, 0.0], [5.0, 5.0]], np.float32)
    # q0 sits between db0 and db1 (distances 1.0 and 1.1: ambiguous); q1 is much closer to db2
    db = np.array([[1.0, 0.0], [-1.1, 0.0], [5.0, 5.1], [9.0, 9.0]], np.float32)
    assert len(match_descriptors(q, db)) == 2
    kept = match_descriptors(q, db, ratio=0.8)
    np.testing.assert_array_equal(kept, [[1, 2]])
    # a loose ratio keeps both
    assert len(match_descriptors(q, db, ratio=0.95)) == 2


def test_mutual_keeps_each_database_descriptor_once() -> None:
    q = np.array([[0.0], [0.1], [0.2], [5.0]], np.float32)
    db = np.array([[0.11], [4.0]], np.float32)
    np.testing.assert_array_equal(match_descriptors(q, db), [[0, 0], [1, 0], [2, 0], [3, 1]])
    np.testing.assert_array_equal(match_descriptors(q, db, mutual=True), [[1, 0], [3, 1]])
    # exact ties on a column: only the first query descriptor is kept
    tie = match_descriptors(np.array([[1.0], [1.0]], np.float32), np.array([[1.0]], np.float32), mutual=True)
    np.testing.assert_array_equal(tie, [[0, 0]])


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize(
    "options",
    [MatcherOptions(), MatcherOptions.delg(), MatcherOptions(ratio=0.9), MatcherOptions(1.2, 0.95, True)],
)
def test_float_matching_agrees_with_brute_force(dtype, options: MatcherOptions) -> None:
    rng = np.random.default_rng(3)
    q = _unit(rng.standard_normal((120, 32)))
    db = np.concatenate([_unit(q[:60] + 0.3 * rng.standard_normal((60, 32))), _unit(rng.standard_normal((90, 32)))])
    db = db[rng.permutation(len(db))]
    q, db = q.astype(dtype), db.astype(dtype)
    got = match_descriptors(q, db, max_distance=options.max_distance, ratio=options.ratio, mutual=options.mutual)
    want = _reference_matches(
        q.astype(np.float32), db.astype(np.float32), options.max_distance, options.ratio, options.mutual
    )
    assert got.dtype == np.int32 and got.shape[1] == 2
    np.testing.assert_array_equal(got, want)
    assert len(got) > 0


def test_unnormalised_descriptors_use_full_l2() -> None:
    rng = np.random.default_rng(4)
    q = rng.standard_normal((50, 8)).astype(np.float32) * rng.uniform(0.1, 10, (50, 1)).astype(np.float32)
    db = rng.standard_normal((70, 8)).astype(np.float32) * rng.uniform(0.1, 10, (70, 1)).astype(np.float32)
    np.testing.assert_array_equal(match_descriptors(q, db, mutual=True), _reference_matches(q, db, mutual=True))
    d2 = descriptor_distances(q, db)
    np.testing.assert_allclose(d2, ((q[:, None] - db[None]) ** 2).sum(-1), rtol=1e-4, atol=1e-3)


def test_empty_inputs_give_no_matches() -> None:
    empty = np.zeros((0, 16), np.float32)
    some = np.ones((3, 16), np.float32)
    for a, b in [(empty, some), (some, empty), (empty, empty)]:
        out = match_descriptors(a, b, max_distance=1.0, ratio=0.8, mutual=True)
        assert out.shape == (0, 2) and out.dtype == np.int32


def test_mixed_kinds_and_dimensions_raise() -> None:
    with pytest.raises(ValueError, match="cannot match"):
        match_descriptors(np.zeros((2, 16), np.uint8), np.zeros((2, 128), np.float32))
    with pytest.raises(ValueError, match="dimensions differ"):
        match_descriptors(np.zeros((2, 16), np.float32), np.zeros((2, 8), np.float32))


def test_hamming_threshold_conversion() -> None:
    assert hamming_threshold_from_l2(1.1, 128) == pytest.approx(38.72)
    assert hamming_threshold_from_l2(1.0, 128) == pytest.approx(32.0)
    assert MatcherOptions.delg_binary().max_distance == pytest.approx(38.72)
    # the conversion is exact for +-1/sqrt(d) codes: squared L2 = 4 h / d
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 2, (20, 64)).astype(bool)
    vec = np.where(bits, 1.0, -1.0) / 8.0
    l2 = np.linalg.norm(vec[:, None] - vec[None], axis=2)
    h = hamming_distances(np.packbits(bits, axis=1), np.packbits(bits, axis=1))
    np.testing.assert_allclose(l2**2, 4 * h / 64)
    with pytest.raises(ValueError):
        hamming_threshold_from_l2(1.0, 0)


@pytest.mark.parametrize("nbits", [128, 40, 64, 8])
def test_hamming_distances_faiss_and_numpy_agree(nbits: int) -> None:
    rng = np.random.default_rng(nbits)
    a = rng.integers(0, 2, (37, nbits)).astype(bool)
    b = rng.integers(0, 2, (53, nbits)).astype(bool)
    want = (a[:, None, :] != b[None, :, :]).sum(-1)
    pa, pb = np.packbits(a, axis=1), np.packbits(b, axis=1)
    np.testing.assert_array_equal(hamming_distances(pa, pb), want)
    np.testing.assert_array_equal(hamming_distances(pa, pb, use_faiss=False), want)


@pytest.mark.parametrize(
    "options", [MatcherOptions(1.1), MatcherOptions(1.1, 0.9), MatcherOptions(1.1, 0.9, True), MatcherOptions()]
)
def test_binary_matching_agrees_with_float_matching_on_sign_codes(options: MatcherOptions) -> None:
    """On codes read as +-1/8 vectors (d = 64, exact in float32) both paths must give the same matches."""
    rng = np.random.default_rng(6)
    dim = 64
    q_bits = rng.integers(0, 2, (200, dim)).astype(bool)
    flips = rng.random((200, dim)) < 0.08  # noisy copies: about 5 bits differ
    db_bits = np.concatenate([q_bits ^ flips, rng.integers(0, 2, (150, dim)).astype(bool)])
    db_bits = db_bits[rng.permutation(len(db_bits))]
    as_float = lambda bits: (np.where(bits, 1.0, -1.0) / np.sqrt(dim)).astype(np.float32)  # noqa: E731
    float_matches = match_descriptors(
        as_float(q_bits),
        as_float(db_bits),
        max_distance=options.max_distance,
        ratio=options.ratio,
        mutual=options.mutual,
    )
    hamming = None if options.max_distance is None else hamming_threshold_from_l2(options.max_distance, dim)
    binary_matches = match_descriptors(
        np.packbits(q_bits, axis=1),
        np.packbits(db_bits, axis=1),
        max_distance=hamming,
        ratio=options.ratio,
        mutual=options.mutual,
    )
    np.testing.assert_array_equal(binary_matches, float_matches)
    assert len(binary_matches) >= 150


def test_binary_delg_star_threshold_on_sign_codes_of_real_valued_descriptors() -> None:
    """DELG*: sign codes of close unit descriptors match; codes of unrelated ones do not."""
    rng = np.random.default_rng(7)
    q = _unit(rng.standard_normal((300, 128)))
    close = _unit(q + 0.3 / np.sqrt(128) * rng.standard_normal(q.shape))  # ~12 bits flip
    far = _unit(rng.standard_normal((300, 128)))
    opts = MatcherOptions.delg_binary()
    pq = np.packbits(q > 0, axis=1)
    near = match_descriptors(pq, np.packbits(close > 0, axis=1), max_distance=opts.max_distance)
    assert len(near) >= 295 and (near[:, 0] == near[:, 1]).mean() > 0.98
    assert len(match_descriptors(pq, np.packbits(far > 0, axis=1), max_distance=opts.max_distance)) < 10
