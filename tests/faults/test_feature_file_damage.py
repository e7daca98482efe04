"""A damaged record in the middle of a feature file raises naming it; the rest still reads; a torn tail is
still ignored on open."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from glocal.errors import DamagedIndexError
from glocal.io.feature_file import FeatureFile, FeatureFileError
from glocal.records import ImageFeatures

pytestmark = pytest.mark.faults


def _features(name: str, seed: int) -> ImageFeatures:
    rng = np.random.default_rng(seed)
    n = 5
    return ImageFeatures(name=name, image_size=(32, 48), descriptors=rng.normal(size=(n, 8)).astype(np.float32),
                         keypoints=rng.uniform(0, 30, size=(n, 2)).astype(np.float32),
                         scales=np.ones(n, np.float32), strengths=rng.uniform(size=n).astype(np.float32))


def _write(path, count=4):
    ff = FeatureFile(path, writable=True)
    ff.append([_features(f"img{i}", i) for i in range(count)])
    ranges = [(r.payload_offset, r.payload_len, r.data_offset) for r in ff.records.records]
    ff.close()
    return ranges


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_byte_in_a_middle_record_raises_naming_it(tmp_path):
    path = tmp_path / "features.glf"
    ranges = _write(path)
    _, _, data_offset = ranges[1]
    _flip(path, data_offset + 3)  # inside record 1's descriptors
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not mistaken for a torn tail
        ff = FeatureFile(path)
    try:
        assert len(ff) == 4
        with pytest.raises(FeatureFileError) as info:
            ff[1]
        msg = str(info.value)
        assert str(path) in msg and "record 1" in msg and "'img1'" in msg
        assert isinstance(info.value, DamagedIndexError)
        with pytest.raises(FeatureFileError):
            ff.get("img1")
        with pytest.raises(FeatureFileError):
            ff.view([0, 1])[1]
        for i in (0, 2, 3):
            f = ff[i]
            assert f.name == f"img{i}"
            np.testing.assert_array_equal(f.descriptors, _features(f"img{i}", i).descriptors)
        assert [(i, why) for i, _, why in ff.records.check()] == [(1, "checksum mismatch")]
    finally:
        ff.close()


def test_unreadable_metadata_in_a_middle_record_keeps_later_records(tmp_path):
    path = tmp_path / "features.glf"
    ranges = _write(path)
    payload_offset = ranges[2][0]
    _flip(path, payload_offset + 4)  # first byte of record 2's JSON metadata
    ff = FeatureFile(path)
    try:
        assert len(ff) == 4
        with pytest.raises(FeatureFileError, match="record 2 .*image name unknown"):
            ff[2]
        assert ff[3].name == "img3" and ff.get("img3").name == "img3"
        assert [i for i, _, _ in ff.records.check()] == [2]
    finally:
        ff.close()


def test_torn_tail_is_still_ignored(tmp_path):
    path = tmp_path / "features.glf"
    _write(path)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 7)  # the last record cut short
    with pytest.warns(UserWarning, match="incomplete tail"):
        ff = FeatureFile(path, writable=True)
    try:
        assert len(ff) == 3 and [f.name for f in ff] == ["img0", "img1", "img2"]
        assert ff.records.check() == []
        ff.append([_features("img3", 3)])  # the writer cuts the torn tail off
    finally:
        ff.close()
    ff = FeatureFile(path)
    try:
        assert [f.name for f in ff] == ["img0", "img1", "img2", "img3"]
    finally:
        ff.close()
