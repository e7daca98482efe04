"""Pyramid planning, batching by size, normalisation, multi-scale fusion and keypoint selection."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from glocal.models.configs import PREPROCESSING_NAMES
from glocal.models.geometry.pyramid import (
    PREPROCESSING,
    LocalCandidates,
    PyramidLevel,
    batch_by_size,
    fuse_global,
    image_to_tensor,
    plan_pyramid,
    preprocessing_by_name,
    run_pyramid,
    select_top_features,
)


def test_preprocessing_presets_are_the_torch_free_names() -> None:
    assert tuple(PREPROCESSING) == PREPROCESSING_NAMES


def test_plan_sizes_and_factors() -> None:
    levels = plan_pyramid([(100, 75)], (0.5, 0.7071, 2.0))
    assert [lv.size for lv in levels] == [(50, 38), (71, 53), (200, 150)]
    assert levels[0].factor == pytest.approx((0.5, 38 / 75))
    assert [lv.level for lv in levels] == [0, 1, 2]


def test_batch_by_size_groups_equal_sizes_and_caps_batch() -> None:
    levels = plan_pyramid([(64, 64), (64, 64), (64, 64), (32, 48)], (1.0, 0.5))
    batches = batch_by_size(levels, batch_size=2)
    for b in batches:
        assert len({(lv.size, lv.level) for lv in b}) == 1 and len(b) <= 2
    assert sorted(len(b) for b in batches) == [1, 1, 1, 1, 2, 2]
    assert sum(len(b) for b in batches) == len(levels)
    with pytest.raises(ValueError, match="batch_size"):
        batch_by_size(levels, 0)


def test_run_pyramid_batches_and_routes_outputs() -> None:
    images = [torch.full((1, 3, 40, 60), float(i)) for i in range(3)]
    calls = []

    def model_fn(x: torch.Tensor, level: PyramidLevel) -> dict[str, torch.Tensor]:
        calls.append(tuple(x.shape))
        return {"mean": x.mean(dim=(1, 2, 3)), "size": torch.tensor([x.shape[2:]] * len(x))}

    out = run_pyramid(images, (1.0, 0.5), model_fn, batch_size=4)
    assert sorted(calls) == [(3, 3, 20, 30), (3, 3, 40, 60)]
    for i in range(3):
        for j, side in enumerate((40, 20)):
            level, res = out[i][j]
            assert (level.image, level.level) == (i, j)
            assert float(res["mean"]) == pytest.approx(i)
            assert res["size"].tolist() == [side, side * 3 // 2]


def test_image_to_tensor_presets() -> None:
    pixels = np.zeros((2, 3, 3), np.uint8)
    pixels[..., 0] = 255  # pure red
    rgb = image_to_tensor(pixels, PREPROCESSING["imagenet"])
    assert rgb.shape == (1, 3, 2, 3)
    assert float(rgb[0, 0, 0, 0]) == pytest.approx((1 - 0.485) / 0.229)
    bgr = image_to_tensor(pixels, PREPROCESSING["imagenet-bgr"])
    assert float(bgr[0, 2, 0, 0]) == pytest.approx((1 - 0.485) / 0.229)  # red is the last channel
    tf = image_to_tensor(pixels, PREPROCESSING["tf"])
    assert float(tf[0, 0, 0, 0]) == pytest.approx(127 / 128) and float(tf[0, 1, 0, 0]) == -1.0
    with pytest.raises(ValueError, match="unknown preprocessing"):
        preprocessing_by_name("caffe")


def test_fuse_global_normalises_each_scale_then_the_sum() -> None:
    rng = np.random.default_rng(0)
    d = rng.normal(size=(3, 8)).astype(np.float32)
    fused = fuse_global(d)
    assert fused.shape == (1, 8) and np.linalg.norm(fused) == pytest.approx(1.0, abs=1e-6)
    assert np.allclose(fuse_global(d * np.array([[1.0], [10.0], [0.1]], np.float32)), fused, atol=1e-6)
    unit = d / np.linalg.norm(d, axis=1, keepdims=True)
    assert np.allclose(fused[0], unit.mean(0) / np.linalg.norm(unit.mean(0)), atol=1e-6)


def _candidates(scores: list[float], scale: float, factor: tuple[float, float]) -> LocalCandidates:
    n = len(scores)
    level = PyramidLevel(0, 0, scale, (1, n), factor)
    return LocalCandidates(
        descriptors=torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 4) + 100 * scale,
        strengths=torch.tensor(scores), xy=np.stack([np.arange(n) * 16.0, np.zeros(n)], 1), level=level,
    )


def test_select_top_features_thresholds_ranks_and_maps_back() -> None:
    a = _candidates([0.5, 3.0, 1.0], scale=0.5, factor=(0.5, 0.5))
    b = _candidates([2.0, 0.1], scale=2.0, factor=(2.0, 2.0))
    sel = select_top_features([a, b], max_keypoints=3, threshold=0.9)
    assert sel.strengths.tolist() == [3.0, 2.0, 1.0]
    assert sel.xy.tolist() == [[32.0, 0.0], [0.0, 0.0], [64.0, 0.0]]  # level x / factor
    assert sel.scales.tolist() == [2.0, 0.5, 2.0]
    assert sel.descriptors[:, 0].tolist() == [51.0, 200.0, 52.0]
    none = select_top_features([a], max_keypoints=5, threshold=10.0)
    assert none.descriptors.shape == (0, 4) and none.xy.shape == (0, 2)
