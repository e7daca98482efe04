"""ViTGaL: shapes and norms, class attention, the frozen-backbone autoencoder, keypoints, checkpoints."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from glocal.io.images import LoadedImage
from glocal.models.checkpoints import CheckpointMismatchError, save_checkpoint
from glocal.models.layers.class_attention import ClassAttention, ClassAttentionBlock
from glocal.models.layers.xcit import XcitConfig
from glocal.models.vitgal import (
    Vitgal,
    VitgalConfig,
    VitgalExtractor,
    VitgalModelConfig,
    VitgalMultiAtrous,
    VitgalOutput,
    load_vitgal_checkpoint,
    patch_centers_xy,
)

TINY = VitgalModelConfig(xcit=XcitConfig(embed_dim=48, depth=1, num_heads=4), local_dim=16, num_classes=3)
TINY_EXTRACTOR = dict(embed_dim=48, depth=1, num_heads=4, local_dim=16)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _model(seed: int = 0, config: VitgalModelConfig = TINY) -> Vitgal:
    torch.manual_seed(seed)
    return Vitgal(config)


def _extractor(**conf) -> VitgalExtractor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return VitgalExtractor(VitgalConfig(**(TINY_EXTRACTOR | conf)))


@pytest.mark.parametrize("size", [(48, 48), (50, 70), (112, 96)])
def test_output_shapes_and_norms(size: tuple[int, int]) -> None:
    model = _model().eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    h, w = math.ceil(size[0] / 16), math.ceil(size[1] / 16)
    assert out.global_descriptor.shape == (2, 48)
    assert out.attention.shape == (2, h, w) and bool((out.attention > 0).all())
    assert out.local_descriptors.shape == (2, h, w, 16)
    assert torch.allclose(out.global_descriptor.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(out.local_descriptors.norm(dim=-1), torch.ones(2, h, w), atol=1e-5)


def test_multi_atrous_keeps_shape_and_splits_channels() -> None:
    torch.manual_seed(0)
    block = VitgalMultiAtrous(50, (1, 3, 6, 9, 12), mlp_ratio=2.0, layer_scale=1.0)
    assert [c.out_channels for c in block.dilated_convs] == [8] * 5
    assert block.gap_branch[1].out_channels == 10  # 50 - 5 * 8
    assert [c.dilation for c in block.dilated_convs] == [(r, r) for r in (1, 3, 6, 9, 12)]
    assert block(torch.randn(2, 12, 50), 3, 4).shape == (2, 12, 50)
    with pytest.raises(ValueError, match="5 dilated branches"):
        VitgalMultiAtrous(48, (6, 12, 18), 4.0, 1.0)


@pytest.mark.parametrize("cls_as_key", [True, False])
def test_class_attention_shape_and_normalisation(cls_as_key: bool) -> None:
    torch.manual_seed(0)
    z = torch.randn(2, 1 + 12, 48)
    attn = ClassAttention(48, 4, cls_as_key)
    new_cls, full = attn(z)
    assert new_cls.shape == (2, 1, 48)
    assert full.shape == (2, 4, 13 if cls_as_key else 12)
    assert torch.allclose(full.sum(-1), torch.ones(2, 4), atol=1e-5)  # rows sum to 1 over the keys
    out = ClassAttentionBlock(48, 4, cls_as_key=cls_as_key)(z)
    assert out.tokens.shape == (2, 13, 48) and out.attention.shape == (2, 4, 12)
    assert out.scores().shape == (2, 12)
    patch_sums = out.attention.sum(-1)
    if cls_as_key:
        assert bool((patch_sums < 1).all())
    else:
        assert torch.allclose(patch_sums, torch.ones(2, 4), atol=1e-5)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 3, 48, 48, generator=g), torch.arange(6) % 3


def test_autoencoder_trains_and_the_rest_stays_frozen() -> None:
    model = _model().train()
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("autoencoder.")}
    opt = torch.optim.Adam(model.autoencoder.parameters(), lr=3e-3)
    x, y = _batch()
    recon = []
    for _ in range(12):
        losses = model.autoencoder_losses(x, y)
        opt.zero_grad()
        losses["total"].backward()
        for name, p in model.named_parameters():
            if not name.startswith("autoencoder."):
                assert p.grad is None, f"{name} received a gradient"
        assert model.autoencoder.encoder.weight.grad is not None
        opt.step()
        recon.append(losses["reconstruction"].item())
    assert recon[-1] < 0.7 * recon[0]
    assert model.backbone.training and model.autoencoder.training  # modes restored
    for k, v in model.state_dict().items():  # no weight nor BN statistic of the frozen part moved
        if k in before:
            assert torch.equal(v, before[k]), k


def test_global_loss_reaches_the_backbone() -> None:
    model = _model().train()
    x, y = _batch(1)
    loss = model.losses(x, y)["global"]
    loss.backward()
    assert model.backbone.patch_embed.proj[0][0].weight.grad is not None
    assert model.arcface is not None and model.arcface.margin == 0.1 and model.arcface.scale == 30.0
    with pytest.raises(ValueError, match="num_classes > 0"):
        _model(config=VitgalModelConfig(xcit=TINY.xcit, local_dim=16)).losses(x, y)


def test_patch_centres() -> None:
    xy = patch_centers_xy((3, 4), (40, 50))
    assert xy.shape == (12, 2)
    np.testing.assert_allclose(xy[:4, 0], [7.5, 23.5, 39.5, 48.5])  # last column: pixels 48..49
    np.testing.assert_allclose(xy[::4, 1], [7.5, 23.5, 35.5])  # last row: pixels 32..39
    np.testing.assert_allclose(xy[5], [23.5, 23.5])  # row-major: index 5 = (row 1, col 1)


class _PeakedModel(torch.nn.Module):
    """Stands in for :class:`Vitgal`: attention peaks at token (row, col) of every level."""

    def __init__(self, row: int, col: int) -> None:
        super().__init__()
        self.row, self.col = row, col

    def forward(self, x: torch.Tensor, with_global: bool = True, with_local: bool = True) -> VitgalOutput:
        b, h, w = len(x), math.ceil(x.shape[-2] / 16), math.ceil(x.shape[-1] / 16)
        attn = torch.full((b, h, w), 0.1)
        attn[:, self.row, self.col] = 5.0
        desc = torch.nn.functional.normalize(torch.ones(b, h, w, 16), dim=-1)
        return VitgalOutput(torch.ones(b, 48) / math.sqrt(48) if with_global else None,
                            attn if with_local else None, desc if with_local else None)


@pytest.mark.parametrize("level_scale, expected", [(1.0, (121.0, 99.0)), (0.5, (168.0, 114.0))])
def test_keypoints_land_on_patch_centres_in_original_pixels(level_scale: float, expected: tuple) -> None:
    """Image loaded at scale 0.5 with a crop offset (10, 20); the peak token (1, 2) or (2, 3)."""
    ext = _extractor(scales=(level_scale,), global_scales=(1.0,), max_keypoints=1)
    row, col = (2, 3) if level_scale == 1.0 else (1, 2)
    ext.model = _PeakedModel(row, col)
    image = LoadedImage(np.zeros((64, 96, 3), np.uint8), original_size=(300, 300), scale=0.5, offset=(10.0, 20.0))
    feats = ext.extract(image, "synthetic")
    # level pixel (16 col + 7.5, 16 row + 7.5) / level scale / image scale + offset
    np.testing.assert_allclose(feats.keypoints[0], expected, atol=1e-4)
    assert feats.strengths[0] == pytest.approx(5.0)
    assert feats.scales[0] == pytest.approx(16 / level_scale / 0.5)


def test_extractor_end_to_end_on_a_random_model() -> None:
    with pytest.warns(UserWarning, match="RANDOM weights"):
        VitgalExtractor(VitgalConfig(**TINY_EXTRACTOR, scales=(1.0,)))
    ext = _extractor(scales=(0.5, 1.0), max_keypoints=20)
    rng = np.random.default_rng(0)
    image = LoadedImage(rng.integers(0, 255, (70, 100, 3), dtype=np.uint8), original_size=(140, 200), scale=0.5)
    feats = ext.extract(image, "img")
    assert feats.global_descriptor.shape == (1, 48)
    assert np.isclose(np.linalg.norm(feats.global_descriptor), 1.0, atol=1e-5)
    assert feats.descriptors.shape == (20, 16) and feats.descriptors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats.descriptors, axis=1), 1.0, atol=1e-5)
    assert np.all(np.diff(feats.strengths) <= 0)
    assert np.all((feats.keypoints >= 0) & (feats.keypoints < [200, 140]))


def test_checkpoint_round_trip_and_misfit(tmp_path: Path) -> None:
    source = _model(0)
    save_checkpoint(source, tmp_path / "vitgal.pt")
    target = _model(1, VitgalModelConfig(xcit=TINY.xcit, local_dim=16))  # inference model: no heads
    report = load_vitgal_checkpoint(target, tmp_path / "vitgal.pt")
    assert "arcface.weight" in report.ignored
    for k, v in target.state_dict().items():
        assert torch.equal(v, source.state_dict()[k]), k
    bad = {k: v for k, v in source.state_dict().items() if k != "norm.weight"}
    bad["autoencoder.encoder.weight"] = torch.zeros(8, 48)
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad_vitgal.pt")
    with pytest.raises(CheckpointMismatchError) as info:
        load_vitgal_checkpoint(target, tmp_path / "bad_vitgal.pt")
    err = info.value
    assert "bad_vitgal.pt" in str(err)
    assert err.missing == ["norm.weight"] and err.unexpected == ["extra.weight"]
    assert err.misshaped[0].startswith("autoencoder.encoder.weight")


def test_release_names_are_converted(tmp_path: Path) -> None:
    """An autoencoder file of the ViTGaL release: the model under ``retrieval_back_bone.``."""
    source = _model(0)
    release = {}
    for k, v in source.state_dict().items():
        for ours, theirs in (("backbone.pos_embed.", "retrieval_back_bone.pos_embeder."),
                             ("backbone.", "retrieval_back_bone."),
                             ("multi_atrous.", "retrieval_back_bone.local_atrous."),
                             ("class_attention.", "retrieval_back_bone.cls_attn_blocks.0."),
                             ("norm.", "retrieval_back_bone.norm."), ("cls_token", "retrieval_back_bone.cls_token"),
                             ("arcface.weight", "retrieval_back_bone.head.weight"),
                             ("autoencoder.encoder.", "whitening_layer."), ("autoencoder.decoder.", "ae_decoder_layer."),
                             ("autoencoder.class_attention.", "cls_attn_blocks.0."), ("autoencoder.norm.", "norm."),
                             ("autoencoder.cls_token", "cls_token"), ("autoencoder.classifier.", "head.")):
            if k.startswith(ours):
                release[theirs + k.removeprefix(ours)] = v
                break
    assert len(release) == len(source.state_dict())
    torch.save({"model": release}, tmp_path / "release_ae.pth")
    target = _model(1)
    assert load_vitgal_checkpoint(target, tmp_path / "release_ae.pth").source == "vitgal-release"
    for k, v in target.state_dict().items():
        assert torch.equal(v, source.state_dict()[k]), k
