"""Region sources (D2R section 4): the R-MAC grid, box cleaning, and the engine-facing callables."""
from __future__ import annotations

import numpy as np
import pytest

from glocal.io.images import LoadedImage
from glocal.models.detector import Detections
from glocal.models.geometry.regions import (
    RegionFilter,
    add_regions,
    clean_boxes,
    region_source,
    rmac_boxes,
    rmac_extra_steps,
)
from glocal.records import ImageFeatures


def features(height: int, width: int, regions=None) -> ImageFeatures:
    rng = np.random.default_rng(0)
    return ImageFeatures(
        name="img", image_size=(height, width), descriptors=rng.normal(size=(5, 8)).astype(np.float32),
        keypoints=(rng.random((5, 2)) * [width, height]).astype(np.float32),
        scales=np.ones(5, np.float32), strengths=np.ones(5, np.float32), regions=regions,
    )


@pytest.mark.parametrize(("width", "height", "counts"), [
    (640, 640, (1, 4, 9)),     # square: l x l
    (640, 480, (2, 6, 12)),    # 4:3 landscape: one extra column
    (480, 640, (2, 6, 12)),    # 3:4 portrait: one extra row
    (1024, 768, (2, 6, 12)),
    (1024, 512, (3, 8, 15)),   # 2:1: two extra columns
    (512, 1024, (3, 8, 15)),
])
def test_rmac_counts_sides_and_coverage(width: int, height: int, counts: tuple[int, int, int]):
    for level, count in zip((1, 2, 3), counts):
        boxes = rmac_boxes(width, height, levels=(level,))
        assert len(boxes) == count
        side = 2 * min(width, height) / (level + 1)
        np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], side, rtol=1e-5)
        np.testing.assert_allclose(boxes[:, 3] - boxes[:, 1], side, rtol=1e-5)
        assert boxes[:, :2].min() >= 0 and boxes[:, 2].max() <= width and boxes[:, 3].max() <= height
        # every pixel centre is inside some region of this level
        xs, ys = np.meshgrid(np.arange(0.5, width, 8), np.arange(0.5, height, 8))
        inside = ((xs[..., None] >= boxes[:, 0]) & (xs[..., None] <= boxes[:, 2])
                  & (ys[..., None] >= boxes[:, 1]) & (ys[..., None] <= boxes[:, 3]))
        assert inside.any(axis=-1).all()
    assert len(rmac_boxes(width, height)) == sum(counts)


def test_rmac_level1_overlap_is_closest_to_40_percent():
    # 2:1 -> 3 regions of side H spaced H/2 apart: 50 % overlap beats 2 regions (0 %) and 4 (67 %)
    assert rmac_extra_steps(1024, 512) == 2
    boxes = rmac_boxes(1024, 512, levels=(1,))
    np.testing.assert_allclose(boxes[:, 0], [0, 256, 512])
    with pytest.raises(ValueError, match="levels start at 1"):
        rmac_boxes(10, 10, levels=(0,))


def test_add_regions_drops_full_image_degenerate_tiny_and_duplicates():
    f = features(100, 200)
    boxes = np.array([
        [0, 0, 200, 100],        # the full image: region 1 already
        [-5, -5, 205, 99],       # the full image after clipping
        [10, 10, 60, 50],        # kept
        [50, 20, 40, 80],        # inverted
        [30, 30, 30, 80],        # zero width
        [0, 0, 8, 8],            # tiny (< 16 px)
        [np.nan, 0, 10, 10],     # not finite
        [150, 60, 260, 140],     # kept, clipped to 150, 60, 200, 100
        [10, 10, 60, 50],        # duplicate
    ], np.float32)
    out = add_regions(f, boxes)
    np.testing.assert_allclose(out.regions, [[10, 10, 60, 50], [150, 60, 200, 100]])
    assert f.regions is None and out.descriptors is f.descriptors  # a copy; features untouched
    assert add_regions(f, np.zeros((0, 4))).regions.shape == (0, 4)
    assert len(clean_boxes(boxes, (100, 200), RegionFilter(max_regions=1))) == 1


def test_rmac_source_excludes_the_full_image():
    square = LoadedImage(np.zeros((64, 64, 3), np.uint8), original_size=(640, 640), scale=0.1)
    out = region_source("rmac")(square, features(640, 640))
    assert out.regions.shape == (4 + 9, 4)  # level 1 of a square image is the full image
    wide = LoadedImage(np.zeros((48, 64, 3), np.uint8), original_size=(480, 640), scale=0.1)
    assert region_source("rmac", levels=(1, 2))(wide, features(480, 640)).regions.shape == (8, 4)


def test_rmac_source_on_a_crop_stays_inside_the_crop():
    crop = LoadedImage(np.zeros((30, 40, 3), np.uint8), original_size=(1000, 1000), scale=0.5, offset=(100.0, 200.0))
    regions = region_source("rmac")(crop, features(1000, 1000)).regions
    assert regions[:, 0].min() >= 100 and regions[:, 2].max() <= 180
    assert regions[:, 1].min() >= 200 and regions[:, 3].max() <= 260


def test_detector_and_none_sources():
    class FakeDetector:
        def detect(self, image: LoadedImage) -> Detections:
            return Detections(np.array([[0, 0, 100, 80], [20, 10, 70, 60]], np.float32), np.array([0.9, 0.5], np.float32))

    image = LoadedImage(np.zeros((8, 10, 3), np.uint8), original_size=(80, 100), scale=0.1)
    f = features(80, 100)
    out = region_source("detector", detector=FakeDetector())(image, f)  # type: ignore[arg-type]
    np.testing.assert_allclose(out.regions, [[20, 10, 70, 60]])
    assert region_source("none")(image, f) is f
    with pytest.raises(ValueError, match="unknown region source 'grid'"):
        region_source("grid")
