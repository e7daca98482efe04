from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from glocal.io.feature_file import FeatureFile, FeatureFileError, RecordFile
from glocal.records import ImageFeatures


def _features(name: str, n: int, seed: int, with_global: bool = False) -> ImageFeatures:
    rng = np.random.default_rng(seed)
    return ImageFeatures(
        name=name,
        image_size=(480, 640),
        descriptors=rng.normal(size=(n, 128)).astype(np.float16),
        keypoints=rng.uniform(0, 600, size=(n, 2)).astype(np.float32),
        scales=rng.uniform(1, 10, n).astype(np.float32),
        strengths=rng.uniform(0, 1, n).astype(np.float32),
        global_descriptor=rng.normal(size=(1, 16)).astype(np.float32) if with_global else None,
        regions=np.array([[0, 0, 10, 10]], np.float32) if with_global else None,
    )


def _same(a: ImageFeatures, b: ImageFeatures) -> None:
    assert a.name == b.name and a.image_size == b.image_size
    for k in ("descriptors", "keypoints", "scales", "strengths", "global_descriptor", "regions"):
        x, y = getattr(a, k), getattr(b, k)
        if x is None:
            assert y is None
        else:
            assert x.dtype == y.dtype and np.array_equal(x, y)


def test_round_trip_append_and_reopen(tmp_path: Path) -> None:
    p = tmp_path / "f.glf"
    ff = FeatureFile(p, writable=True)
    a, b, c = _features("a", 10, 0), _features("ü/b.jpg", 0, 1), _features("c", 7, 2, with_global=True)
    ff.append([a, b])
    ff.close()
    ff = FeatureFile(p, writable=True)
    ff.append([c])
    ff.close()
    ro = FeatureFile(p)
    assert ro.names == ["a", "ü/b.jpg", "c"]
    _same(ro[0], a)
    _same(ro.get("ü/b.jpg"), b)
    _same(ro.get("c"), c)
    with pytest.raises(FeatureFileError, match="read-only"):
        ro.append([_features("d", 1, 3)])


def test_duplicate_name_refused(tmp_path: Path) -> None:
    ff = FeatureFile(tmp_path / "f.glf", writable=True)
    ff.append([_features("a", 3, 0)])
    with pytest.raises(FeatureFileError, match="already exists"):
        ff.append([_features("a", 3, 1)])


def test_torn_tail_is_ignored_and_cut_by_next_writer(tmp_path: Path) -> None:
    p = tmp_path / "f.glf"
    ff = FeatureFile(p, writable=True)
    ff.append([_features("a", 50, 0)])
    ff.append([_features("b", 50, 1)])
    ff.close()
    size = p.stat().st_size
    with open(p, "r+b") as f:  # simulate a crash half-way through writing record "b"
        f.truncate(size - 100)
    with pytest.warns(UserWarning, match="incomplete tail"):
        ff = FeatureFile(p, writable=True)
    assert ff.names == ["a"]
    ff.append([_features("c", 5, 2)])
    ff.close()
    ro = FeatureFile(p)
    assert ro.names == ["a", "c"]
    _same(ro.get("c"), _features("c", 5, 2))


def test_corrupt_record_detected(tmp_path: Path) -> None:
    p = tmp_path / "f.glf"
    ff = FeatureFile(p, writable=True)
    ff.append([_features("a", 50, 0), _features("b", 50, 1)])
    ff.close()
    first = RecordFile(p).records[0]
    with open(p, "r+b") as f:  # flip a byte inside record "a"'s arrays (not the last record)
        f.seek(first.data_offset + 10)
        byte = f.read(1)
        f.seek(first.data_offset + 10)
        f.write(bytes([byte[0] ^ 0xFF]))
    ro = FeatureFile(p)
    with pytest.raises(FeatureFileError, match="checksum"):
        ro.get("a")
    _same(ro.get("b"), _features("b", 50, 1))


def test_not_a_feature_file_and_future_version(tmp_path: Path) -> None:
    p = tmp_path / "x.glf"
    p.write_bytes(b"hello world, not ours")
    with pytest.raises(FeatureFileError, match="bad magic"):
        FeatureFile(p)
    q = tmp_path / "future.glf"
    RecordFile(q, writable=True).close()
    data = bytearray(q.read_bytes())
    data[8] = 99  # version field
    q.write_bytes(bytes(data))
    with pytest.raises(FeatureFileError, match="version 99"):
        FeatureFile(q)
    with pytest.raises(FeatureFileError, match="does not exist"):
        FeatureFile(tmp_path / "missing.glf")


def test_records_reject_bad_shapes() -> None:
    with pytest.raises(ValueError, match="keypoints"):
        ImageFeatures("x", (1, 1), np.zeros((3, 4)), np.zeros((2, 2), np.float32), np.zeros(3, np.float32),
                      np.zeros(3, np.float32))
