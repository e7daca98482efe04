"""DOLG: shapes and norms, orthogonality of the fused local part, ablation switches, training, extractor."""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch

from glocal.io.images import LoadedImage
from glocal.methods import create_extractor
from glocal.models.dolg import Dolg, DolgConfig, DolgModelConfig, orthogonal_component

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def model(quiet) -> Dolg:
    torch.manual_seed(0)
    return quiet(Dolg, DolgModelConfig(num_classes=3)).eval()


@pytest.mark.parametrize("size", [(64, 64), (96, 128), (160, 112)])
def test_shapes_and_norms(model: Dolg, size: tuple[int, int]) -> None:
    with torch.no_grad():
        parts = model.fusion_parts(torch.randn(2, 3, *size))
        desc = model(torch.randn(2, 3, *size))
    h, w = -(-size[0] // 16), -(-size[1] // 16)
    assert parts["f_l"].shape == (2, 1024, h, w)  # local branch at res4 (DOLG's "Res3"), stride 16
    assert parts["f_g"].shape == (2, 1024) and parts["embedding"].shape == (2, 512)
    assert desc.shape == (2, 512) and torch.allclose(desc.norm(dim=1), torch.ones(2), atol=1e-5)


def test_fused_local_part_is_orthogonal_to_global(model: Dolg) -> None:
    with torch.no_grad():
        parts = model.fusion_parts(torch.randn(2, 3, 96, 96))
    f_orth, f_g, f_l = parts["fused_local"], parts["f_g"], parts["f_l"]
    dots = torch.einsum("bchw,bc->bhw", f_orth, f_g)
    scale = f_l.norm(dim=1) * f_g.norm(dim=1)[:, None, None]
    assert (dots.abs() / scale).max() < 1e-5
    assert torch.einsum("bchw,bc->bhw", f_l, f_g).abs().max() > 100 * dots.abs().max()
    # eq. 2-5 on hand-made vectors: the parallel part is removed, the orthogonal part is kept
    g = torch.tensor([[2.0, 0.0, 0.0]])
    local = torch.tensor([[3.0, 4.0, 5.0]]).view(1, 3, 1, 1)
    assert orthogonal_component(local, g).flatten().tolist() == [0.0, 4.0, 5.0]


@pytest.mark.parametrize("fusion,global_pooling,fusion_pooling,atrous", [
    ("concat", "avg", "gem", True), ("hadamard", "gem", "avg", False), ("orthogonal", "gem", "gem", False),
])
def test_ablation_switches(fusion: str, global_pooling: str, fusion_pooling: str, atrous: bool, quiet) -> None:
    torch.manual_seed(0)
    cfg = DolgModelConfig(fusion=fusion, global_pooling=global_pooling, fusion_pooling=fusion_pooling,
                          multi_atrous=atrous)
    net = quiet(Dolg, cfg).eval()
    with torch.no_grad():
        parts = net.fusion_parts(torch.randn(1, 3, 64, 64))
    expected = {"concat": parts["f_l"], "hadamard": parts["f_l"] * parts["f_g"][:, :, None, None]}.get(fusion)
    if expected is not None:
        assert torch.allclose(parts["fused_local"], expected)
    assert parts["embedding"].shape == (1, 512)
    assert isinstance(net.multi_atrous, torch.nn.Identity) != atrous
    with pytest.raises(ValueError, match="fusion"):
        DolgModelConfig(fusion="sum")


def test_training_lowers_the_arcface_loss(quiet) -> None:
    """8 end-to-end Adam steps (3 classes, 6 images of 64 x 64); few because ResNet-50 is slow on CPU."""
    torch.manual_seed(0)
    net = quiet(Dolg, DolgModelConfig(num_classes=3)).train()
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(6) % 3
    x = torch.randn(3, 3, 1, 1, generator=g)[labels] + 0.3 * torch.randn(6, 3, 64, 64, generator=g)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    history = []
    for _ in range(8):
        loss = net.losses(x, labels)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    assert np.mean(history[-2:]) < 0.7 * history[0], history


def test_extractor_global_only_and_rebuild(quiet) -> None:
    ex = quiet(create_extractor, "dolg", scales=(0.7071, 1.0))
    pixels = np.random.default_rng(0).integers(0, 256, (72, 100, 3), dtype=np.uint8)
    image = LoadedImage(pixels, (144, 200), 0.5)
    feats = ex.extract(image, "x")
    assert feats.global_descriptor.shape == (1, 512)
    assert np.linalg.norm(feats.global_descriptor) == pytest.approx(1.0, abs=1e-5)
    assert feats.num_features == 0 and feats.keypoints.shape == (0, 2)
    with torch.inference_mode():
        x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
        x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        small = torch.nn.functional.interpolate(x, size=(51, 71), mode="bilinear", align_corners=False)
        per_scale = torch.cat([ex.model(small), ex.model(x)])
    fused = per_scale.sum(0) / per_scale.sum(0).norm()
    assert np.allclose(feats.global_descriptor[0], fused.numpy(), atol=1e-5)
    rebuilt = quiet(create_extractor, "dolg", **asdict(ex.config))
    assert rebuilt.config == ex.config
    assert np.allclose(rebuilt.extract(image, "x").global_descriptor, feats.global_descriptor, atol=1e-5)


def test_pytorch_port_preset() -> None:
    cfg = DolgConfig.pytorch_port("r50_dolg_512.pyth")
    assert (cfg.multi_atrous, cfg.preprocessing, cfg.checkpoint) == (False, "imagenet-bgr", "r50_dolg_512.pyth")
    assert not DolgModelConfig.from_extractor(cfg).multi_atrous
