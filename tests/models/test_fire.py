"""FIRe: LIT (eq. 3-5), Super-features (eq. 6), multi-scale extraction and attention maps."""
from __future__ import annotations

import warnings
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from glocal.io.images import LoadedImage
from glocal.models.fire import FireConfig, FireExtractor, FireNet
from glocal.models.geometry.receptive_field import feature_centers_xy, receptive_field
from glocal.models.how import trunk_path
from glocal.models.layers.lit import LitConfig, LocalFeatureIntegrationTransformer

SMALL = LitConfig(num_templates=12, iterations=3, input_dim=24, dim=16)


def _lit(config: LitConfig = SMALL, seed: int = 0) -> LocalFeatureIntegrationTransformer:
    torch.manual_seed(seed)
    return LocalFeatureIntegrationTransformer(config).eval()


def test_paper_defaults_and_ordered_set_independent_of_input_size() -> None:
    assert (LitConfig().num_templates, LitConfig().iterations, LitConfig().dim) == (256, 6, 1024)
    torch.manual_seed(0)
    paper = LocalFeatureIntegrationTransformer()
    with torch.no_grad():
        out = paper(torch.rand(1, 1024, 2, 3))
    assert out.features.shape == (1, 256, 1024) and out.attention.shape == (1, 256, 2, 3)
    lit = _lit()
    with torch.no_grad():
        for h, w in ((1, 1), (3, 4), (9, 7)):
            out = lit(torch.rand(2, 24, h, w))
            assert out.features.shape == (2, 12, 16)
            assert out.attention.shape == (2, 12, h, w)


def test_attention_normalisation_eq4() -> None:
    lit = _lit()
    with torch.no_grad():
        out = lit(torch.rand(2, 24, 5, 6))
    # alpha^: softmax over the N templates at every location
    assert torch.allclose(out.responsibility.sum(dim=1), torch.ones(2, 5, 6), atol=1e-5)
    # alpha: every template's map is l1-normalised over the L locations
    assert torch.allclose(out.attention.sum(dim=(2, 3)), torch.ones(2, 12), atol=1e-5)
    assert (out.attention > 0).all()
    expected = (out.responsibility + 1e-8) / (out.responsibility + 1e-8).sum(dim=(2, 3), keepdim=True)
    assert torch.allclose(out.attention, expected, atol=1e-6)


def test_permuting_locations_leaves_super_features_unchanged() -> None:
    lit = _lit()
    torch.manual_seed(1)
    u = torch.rand(2, 30, 24)
    perm = torch.randperm(30)
    with torch.no_grad():
        a, b = lit.forward_set(u), lit.forward_set(u[:, perm])
    assert torch.allclose(a.features, b.features, atol=1e-5)
    assert torch.allclose(a.attention[:, :, perm], b.attention, atol=1e-6)


def test_iterations_share_weights_and_follow_eq3_to_5() -> None:
    one, six = (LocalFeatureIntegrationTransformer(LitConfig(iterations=t, input_dim=24, dim=16, num_templates=4))
                for t in (1, 6))
    assert sum(p.numel() for p in one.parameters()) == sum(p.numel() for p in six.parameters())
    lit = _lit()
    u = torch.rand(1, 10, 24)
    with torch.no_grad():
        out = lit.forward_set(u)
        # eq. 3-5 written out with the module's weights
        x = F.layer_norm(u, (24,), lit.norm_input.weight, lit.norm_input.bias)
        k, v = x @ lit.to_key.weight.T, x @ lit.to_value.weight.T
        q = lit.templates.unsqueeze(0)
        for _ in range(3):
            m = (k @ lit.to_query(lit.norm_query(q)).transpose(1, 2)) / 16**0.5      # (1, L, N) = M_ln
            alpha_hat = m.softmax(dim=-1)
            alpha = (alpha_hat + 1e-8) / (alpha_hat + 1e-8).sum(dim=1, keepdim=True)
            psi = alpha.transpose(1, 2) @ v + q
            hidden = F.relu(F.linear(F.layer_norm(psi, (16,), lit.mlp[0].weight, lit.mlp[0].bias),
                                     lit.mlp[1].weight, lit.mlp[1].bias))
            q = F.linear(hidden, lit.mlp[3].weight, lit.mlp[3].bias) + psi
    assert lit.mlp[1].out_features == 8  # footnote 3: FC to d / 2
    assert torch.allclose(out.features, q, atol=1e-5)
    assert torch.allclose(out.attention, alpha.transpose(1, 2), atol=1e-6)


def _tiny_trunk() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(), nn.Conv2d(8, 24, 3, stride=4, padding=1))


def test_super_features_eq6() -> None:
    torch.manual_seed(0)
    net = FireNet(_tiny_trunk(), SMALL, output_dim=6).eval()
    with torch.no_grad():
        net.whiten.fit(torch.randn(200, 16))
        out = net.super_features(torch.rand(2, 3, 64, 80))
    assert out.descriptors.shape == (2, 12, 6)
    assert torch.allclose(out.descriptors.norm(dim=-1), torch.ones(2, 12), atol=1e-5)
    assert torch.allclose(out.descriptors, F.normalize(net.whiten(out.raw), dim=-1), atol=1e-6)
    assert torch.allclose(out.strengths, out.raw.norm(dim=-1), atol=1e-4)
    assert not any(p.requires_grad for p in net.whiten.buffers()) and not list(net.whiten.parameters())


@pytest.fixture(scope="module")
def fire_extractor() -> FireExtractor:
    config = FireConfig(scales=(1.0, 0.5), max_keypoints=20, num_templates=16, iterations=2)
    with pytest.warns(UserWarning, match="NO trained weights"):
        return FireExtractor(config)


def _image() -> LoadedImage:
    rng = np.random.default_rng(0)
    return LoadedImage(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), (192, 256), 0.5, (10.0, 5.0))


def test_extractor_selects_strongest_across_scales(fire_extractor: FireExtractor) -> None:
    image = _image()
    feats = fire_extractor.extract(image, "im")
    assert feats.descriptors.shape == (20, 128) and feats.descriptors.dtype == np.float32
    assert np.all(np.diff(feats.strengths) <= 0)
    levels = fire_extractor.run_levels(image, (1.0, 0.5))
    everything = np.sort(np.concatenate([out["strengths"].numpy() for _, out in levels]))[::-1]
    assert np.allclose(feats.strengths, everything[:20])   # top 20 of the 2 x 16 Super-features
    assert np.allclose(np.linalg.norm(feats.descriptors, axis=1), 1.0, atol=1e-5)
    # keypoints (attention centroids) lie inside the original image, offset included
    x0, y0 = image.offset
    assert np.all(feats.keypoints[:, 0] >= x0) and np.all(feats.keypoints[:, 0] <= x0 + 256)
    assert np.all(feats.keypoints[:, 1] >= y0) and np.all(feats.keypoints[:, 1] <= y0 + 192)
    assert set(np.round(feats.scales, 3)) <= {32.0, 64.0}  # one res4 cell: 16 px / level scale / image scale
    assert feats.global_descriptor is not None and feats.global_descriptor.shape == (1, 128)


def test_keypoints_are_attention_centroids(fire_extractor: FireExtractor) -> None:
    image = _image()
    maps = fire_extractor.attention_maps(image, scale=1.0)
    assert maps.maps.shape[0] == 16 and np.allclose(maps.maps.sum(axis=(1, 2)), 1.0, atol=1e-5)
    h, w = maps.maps.shape[1:]
    path = trunk_path(fire_extractor.net.backbone)
    centres = feature_centers_xy(receptive_field(path, 0), receptive_field(path, 1), h, w)
    expected = maps.maps.reshape(16, -1) @ centres / image.scale + np.asarray(image.offset)
    assert np.allclose(maps.keypoints, expected, atol=1e-2)
    feats = fire_extractor.extract(image, "im")
    level1 = feats.scales == pytest.approx(32.0)
    for kp, s in zip(feats.keypoints[level1], feats.strengths[level1], strict=True):
        match = np.flatnonzero(np.isclose(maps.strengths, s, rtol=1e-5))
        assert len(match) >= 1 and np.allclose(maps.keypoints[match[0]], kp, atol=1e-2)


def test_config_round_trip_and_interface(fire_extractor: FireExtractor) -> None:
    assert fire_extractor.name == "fire" and fire_extractor.max_side == 1024
    rebuilt = FireConfig(**asdict(fire_extractor.config))
    assert rebuilt == fire_extractor.config
    assert FireConfig(scales=[1, 0.5]).scales == (1.0, 0.5)
    assert FireConfig().scales == (2.0, 1.414, 1.0, 0.707, 0.5, 0.353, 0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="scales"):
            FireConfig(scales=(1.0, 0.0))


def test_visualize_attention_command(tmp_path) -> None:
    """``glocal visualize attention`` end to end on a small image (paper-size LIT, random weights)."""
    from PIL import Image
    from typer.testing import CliRunner

    from glocal.cli.main import app
    from glocal.evaluate.attention import render_attention_grid

    grid = render_attention_grid(np.zeros((40, 80, 3), np.uint8), np.random.rand(3, 2, 4), ["a", "b", "c"],
                                 columns=2, tile_width=64)
    assert grid.shape == (32 * 2 + 4, 64 * 2 + 4, 3)
    rng = np.random.default_rng(0)
    src = tmp_path / "in.png"
    Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(src)
    png = tmp_path / "grid.png"
    result = CliRunner().invoke(app, ["visualize", "attention", str(src), "--out", str(png), "--maps", "3", "--columns", "2"])
    assert result.exit_code == 0, result.output
    assert "NO trained weights" in result.output and png.is_file()
    assert np.asarray(Image.open(png)).shape == (2 * 171 + 4, 2 * 256 + 4, 3)
    bad = CliRunner().invoke(app, ["visualize", "attention", str(tmp_path / "missing.png"), "--out", str(png)])
    assert bad.exit_code == 3 and "missing.png" in bad.output and "Traceback" not in bad.output
