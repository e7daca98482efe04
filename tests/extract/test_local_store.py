"""Tests of the local feature store: float16 / binary round trips, lazy reads, binary matching."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from glocal.extract.local_store import LocalStore, binarize, encode_features
from glocal.io.feature_file import FeatureFileError
from glocal.records import ImageFeatures
from glocal.rerank.matching import hamming_threshold_from_l2, match_descriptors
from glocal.rerank.shortlist import rerank


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _features(name: str, n: int, seed: int, dim: int = 128) -> ImageFeatures:
    rng = np.random.default_rng(seed)
    return ImageFeatures(
        name=name,
        image_size=(600, 800),
        descriptors=_unit(rng.standard_normal((n, dim))),
        keypoints=rng.uniform(0, 800, (n, 2)).astype(np.float32),
        scales=rng.uniform(1, 8, n).astype(np.float32),
        strengths=rng.uniform(0, 500, n).astype(np.float32),
        global_descriptor=_unit(rng.standard_normal((1, 16))),
    )


def test_float16_round_trip(tmp_path: Path) -> None:
    a, b = _features("a.jpg", 50, 0), _features("b.jpg", 0, 1)
    with LocalStore(tmp_path / "s.glf", "float16", writable=True) as store:
        store.add([a, b])
    store = LocalStore(tmp_path / "s.glf")
    assert store.mode == "float16" and store.dim == 128 and store.names == ["a.jpg", "b.jpg"]
    got = store.get("a.jpg")
    assert got.descriptors.dtype == np.float32 and got.image_size == (600, 800)
    np.testing.assert_allclose(got.descriptors, a.descriptors, atol=1e-3)
    np.testing.assert_array_equal(got.keypoints, a.keypoints)
    np.testing.assert_array_equal(got.scales, a.scales)
    np.testing.assert_allclose(got.strengths, a.strengths, rtol=1e-3)
    np.testing.assert_array_equal(got.descriptors, encode_features(a, "float16").descriptors)
    assert got.global_descriptor is None and store.get("b.jpg").num_features == 0
    assert store.records.records[0].attrs["mode"] == "float16"
    store.close()


def test_binary_round_trip_and_mode_checks(tmp_path: Path) -> None:
    a = _features("a", 40, 2)
    with LocalStore(tmp_path / "s.glf", "binary", writable=True) as store:
        store.add(a)
        store.add(encode_features(_features("c", 3, 4), "binary"))  # already packed: stored as is
        with pytest.raises(ValueError, match="64-D"):
            store.add(_features("d", 3, 5, dim=64))
    store = LocalStore(tmp_path / "s.glf")
    got = store.get("a")
    assert store.mode == "binary" and got.descriptors.dtype == np.uint8 and got.descriptors.shape == (40, 16)
    np.testing.assert_array_equal(got.descriptors, np.packbits(a.descriptors > 0, axis=1))
    np.testing.assert_array_equal(store.get("c").descriptors, binarize(_features("c", 3, 4).descriptors))
    with pytest.raises(FeatureFileError, match="'binary'.*'float16'"):
        LocalStore(tmp_path / "s.glf", "float16")
    with pytest.raises(ValueError, match="packed binary"):
        with LocalStore(tmp_path / "f.glf", "float16", writable=True) as other:
            other.add(encode_features(a, "binary"))
    stats = store.stats()
    assert stats.images == 2 and stats.features == 43 and stats.bytes_per_feature == 16 + 8 + 4 + 2
    assert stats.bytes_per_image == (tmp_path / "s.glf").stat().st_size / 2
    store.close()


def test_view_reads_only_requested_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path / "s.glf", "float16", writable=True)
    store.add([_features(f"im{i}", 10, i, dim=32) for i in range(20)])
    reads: list[int] = []
    real_read = store.records.read

    def counting_read(i: int, verify: bool = True):
        reads.append(i)
        return real_read(i, verify)

    monkeypatch.setattr(store.records, "read", counting_read)
    view = store.view(["im7", "im3", "im15"])
    assert reads == [] and len(view) == 3 and view.names == ["im7", "im3", "im15"]
    assert view[1].name == "im3" and reads == [3]
    assert [f.name for f in view[1:]] == ["im3", "im15"] and reads == [3, 3, 15]
    with pytest.raises(KeyError, match="nope"):
        store.view(["nope"])
    store.close()


def test_binary_store_output_matches_and_reranks(tmp_path: Path) -> None:
    """DELG*: the query is binarized like the database; matching by Hamming distance finds the shared
    features and re-ranking over the lazy view puts the true match first."""
    rng = np.random.default_rng(7)
    query = _features("q", 200, 8)
    a_mat = np.array([[0.9, 0.1, 40.0], [-0.1, 0.95, 10.0]], np.float32)
    shared = 120
    desc = _unit(rng.standard_normal((200, 128)))
    desc[:shared] = _unit(query.descriptors[:shared] + 0.03 * rng.standard_normal((shared, 128)))
    kp = rng.uniform(0, 800, (200, 2)).astype(np.float32)
    kp[:shared] = query.keypoints[:shared] @ a_mat[:, :2].T + a_mat[:, 2]
    match = ImageFeatures("match", (600, 800), desc, kp, np.ones(200, np.float32), np.ones(200, np.float32))
    store = LocalStore(tmp_path / "s.glf", "binary", writable=True)
    store.add([_features("other", 200, 9), match])
    q = store.encode(query)
    pairs = match_descriptors(q.descriptors, store.get("match").descriptors,
                              max_distance=hamming_threshold_from_l2(1.1, 128))
    correct = (pairs[:, 0] == pairs[:, 1]) & (pairs[:, 0] < shared)
    assert correct.sum() >= 0.9 * shared and correct.mean() >= 0.9
    ranked = rerank(q, store.view(["other", "match"]), [0.9, 0.5])
    assert ranked[0].position == 1 and ranked[0].inliers >= 0.9 * shared and ranked[1].inliers < 10
    store.close()
