"""HOW: whitening o(.), local features and strengths, eq. 1, multi-scale extraction, whitening fit."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from glocal.io.images import LoadedImage
from glocal.models.geometry.receptive_field import feature_centers_xy, receptive_field
from glocal.models.how import HowConfig, HowExtractor, HowNet, fit_whitening, trunk_path
from glocal.models.layers.whitening import PCAWhitening, fit_pca_whitening, stack_feature_sample


def _correlated(n: int = 3000, d: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d) * 5


def test_whitening_fit_gives_zero_mean_identity_covariance() -> None:
    x = _correlated()
    layer = PCAWhitening(12, 6).fit(x)
    y = layer(torch.from_numpy(x).float()).double().numpy()
    assert np.allclose(y.mean(0), 0, atol=1e-3)
    assert np.allclose(np.cov(y.T, bias=True), np.eye(6), atol=1e-3)
    assert bool(layer.fitted) and not list(layer.parameters())
    assert set(layer.state_dict()) == {"weight", "bias", "fitted"}
    # reproducible, including the eigenvector signs
    again = PCAWhitening(12, 6).fit(x[::-1].copy())
    assert torch.allclose(layer.weight, again.weight, atol=1e-4)
    # shrinkage 0 = PCA rotation: variances are the eigenvalues, in decreasing order
    mean, proj = fit_pca_whitening(x, 4, shrinkage=0.0)
    var = ((x - mean) @ proj.T).var(axis=0)
    assert np.all(np.diff(var) <= 0) and np.allclose(np.linalg.norm(proj, axis=1), 1.0)


def test_whitening_errors_and_unfitted_warning() -> None:
    with pytest.raises(ValueError, match="whitening.py"):
        fit_pca_whitening(np.zeros((1, 4)), 2)
    with pytest.raises(ValueError, match="out_dim"):
        PCAWhitening(4, 8)
    with pytest.warns(UserWarning, match="only 3 features"):
        fit_pca_whitening(np.random.default_rng(0).random((3, 8)), 4)
    with pytest.warns(UserWarning, match="NOT fitted"):
        PCAWhitening(4, 2).warn_if_unfitted("test")
    sample = stack_feature_sample([np.ones((5, 3)), torch.zeros(4, 3)], max_features=6, seed=1)
    assert sample.shape == (6, 3)


def test_local_features_strengths_smoothing_and_eq1() -> None:
    torch.manual_seed(0)
    net = HowNet(nn.Identity(), feature_dim=8, output_dim=4).eval()
    net.whiten.fit(torch.randn(100, 8))
    fmap = torch.rand(2, 8, 4, 5)
    with torch.no_grad():
        local = net.local_features(fmap)
        g = net.global_descriptor(fmap)
    assert local.size == (4, 5) and local.raw.shape == (2, 20, 8) and local.whitened.shape == (2, 20, 4)
    assert torch.allclose(local.strengths, fmap.flatten(2).norm(dim=1), atol=1e-5)    # ||u_l|| before smoothing
    # 3x3 smoothing averaged over the valid cells only: a corner averages 4 cells
    assert torch.allclose(local.raw[0, 0], fmap[0, :, :2, :2].mean(dim=(1, 2)), atol=1e-6)
    assert torch.allclose(local.raw[0, 6], fmap[0, :, :3, :3].mean(dim=(1, 2)), atol=1e-6)
    expected = F.normalize((local.strengths.unsqueeze(-1) * net.whiten(local.raw)).sum(1), dim=-1)   # HOW eq. 1
    assert torch.allclose(g, expected, atol=1e-6)


@pytest.fixture(scope="module")
def how_extractor() -> HowExtractor:
    with pytest.warns(UserWarning, match="NO trained weights"):
        return HowExtractor(HowConfig(scales=(1.0, 0.5), max_keypoints=30))


def _image(seed: int = 0) -> LoadedImage:
    rng = np.random.default_rng(seed)
    return LoadedImage(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), (192, 256), 0.5, (10.0, 5.0))


def test_extract_top_features_by_norm_across_scales(how_extractor: HowExtractor) -> None:
    image = _image()
    feats = how_extractor.extract(image, "im")
    assert feats.descriptors.shape == (30, 128) and np.all(np.diff(feats.strengths) <= 0)
    assert np.allclose(np.linalg.norm(feats.descriptors, axis=1), 1.0, atol=1e-5)
    levels = how_extractor.run_levels(image, (1.0, 0.5))
    assert [lv.size for lv, _ in levels] == [(96, 128), (48, 64)]
    everything = np.sort(np.concatenate([out["strengths"].numpy() for _, out in levels]))[::-1]
    assert len(everything) == 6 * 8 + 3 * 4 and np.allclose(feats.strengths, everything[:30])
    assert feats.global_descriptor is not None and feats.global_descriptor.shape == (1, 128)


def test_keypoints_are_receptive_field_centres_in_original_pixels(how_extractor: HowExtractor) -> None:
    image = _image()
    feats = how_extractor.extract(image, "im")
    path = trunk_path(how_extractor.net.backbone)
    grid1 = feature_centers_xy(receptive_field(path, 0), receptive_field(path, 1), 6, 8)
    grid2 = feature_centers_xy(receptive_field(path, 0), receptive_field(path, 1), 3, 4) / 0.5
    allowed = np.concatenate([grid1, grid2]) / image.scale + np.asarray(image.offset)
    dist = np.abs(feats.keypoints[:, None, :] - allowed[None]).sum(-1).min(1)
    assert np.all(dist < 1e-3)
    assert set(np.round(feats.scales, 3)) <= {32.0, 64.0}


def _tiny_trunk() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(), nn.Conv2d(8, 24, 3, stride=4, padding=1))


def test_fit_whitening_and_glocal_checkpoint_round_trip(tmp_path: Path) -> None:
    config = HowConfig(scales=(1.0, 0.5), max_keypoints=30, output_dim=16)
    with pytest.warns(UserWarning, match="NO trained weights"):
        extractor = HowExtractor(config, trunk=_tiny_trunk(), feature_dim=24)
    images = [_image(1), _image(2)]
    raw = extractor.raw_features(images[0], scales=(1.0,), max_features=40)
    assert raw.shape == (40, 24)
    layer = fit_whitening(extractor, images, features_per_image=48, shrinkage=1.0)
    assert layer is extractor.net.whiten and bool(layer.fitted)
    path = extractor.save_checkpoint(tmp_path / "how.pt")
    reloaded = HowExtractor(HowConfig(**{**asdict(config), "checkpoint": str(path)}), trunk=_tiny_trunk(), feature_dim=24)
    for key, value in extractor.net.state_dict().items():
        assert torch.equal(value, reloaded.net.state_dict()[key]), key
    a, b = extractor.extract(images[0], "x"), reloaded.extract(images[0], "x")
    assert np.allclose(a.descriptors, b.descriptors, atol=1e-5) and np.allclose(a.keypoints, b.keypoints)
