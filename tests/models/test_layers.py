"""Shared layers: GeM, ArcFace, multi-atrous, ResNet backbones (real ResNet-50 at tiny sizes)."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

from glocal.models.layers import ArcFace, BackboneConfig, GeM, MultiAtrous, ResNetBackbone, gem

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _quiet_backbone(config: BackboneConfig) -> ResNetBackbone:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return ResNetBackbone(config)


def test_gem_limits_and_learnable_p() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 5, 4, 3) + 0.01
    assert torch.allclose(gem(x, 1.0), x.mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(gem(x, 60.0), x.amax(dim=(2, 3)), rtol=0.05)
    assert torch.allclose(GeM(3.0)(x), (x.pow(3).mean(dim=(2, 3))).pow(1 / 3), atol=1e-6)
    learned = GeM(3.0, learn_p=True)
    learned(x).sum().backward()
    assert learned.p.grad is not None and "p" in dict(learned.named_parameters())
    assert "p" in dict(GeM().named_buffers())


def test_arcface_margin_on_target_only() -> None:
    torch.manual_seed(0)
    head = ArcFace(dim=8, num_classes=4, margin=0.1, scale=30.0)
    f = torch.randn(3, 8)
    labels = torch.tensor([0, 2, 3])
    plain, with_margin = head(f).detach(), head(f, labels).detach()
    cos = head.cosine(f).detach()
    assert torch.allclose(plain, 30 * cos)
    for i, t in enumerate(labels.tolist()):
        theta = math.acos(float(cos[i, t]))
        assert float(with_margin[i, t]) == pytest.approx(30 * math.cos(theta + 0.1), abs=1e-4)
        others = [c for c in range(4) if c != t]
        assert torch.allclose(with_margin[i, others], plain[i, others])
    # theta > pi - m: the margin would raise the cosine, so it is skipped
    head.weight.data[1] = -f[0] / f[0].norm()
    assert float(head(f[:1], torch.tensor([1]))[0, 1].detach()) == pytest.approx(-30.0, abs=1e-3)
    assert head.loss(f, labels).ndim == 0


def test_multi_atrous_shapes_and_branches() -> None:
    torch.manual_seed(0)
    block = MultiAtrous(in_channels=16, out_channels=12, branch_channels=4, rates=(1, 2, 3))
    assert len(block.dilated) == 3 and block.pointwise is None and block.fuse.in_channels == 16
    x = torch.randn(2, 16, 7, 9)
    assert block(x).shape == (2, 12, 7, 9)
    assert MultiAtrous(16, 12, 4, (6, 12, 18), pointwise_branch=True).fuse.in_channels == 20
    assert [c.dilation for c in MultiAtrous(8, 8, 2).dilated] == [(6, 6), (12, 12), (18, 18)]


@pytest.mark.parametrize("style", ["torchvision", "tf"])
def test_backbone_stage_shapes(style: str) -> None:
    torch.manual_seed(0)
    bb = _quiet_backbone(BackboneConfig(style=style)).eval()
    with torch.no_grad():
        out = bb(torch.randn(1, 3, 96, 128), ("res2", "res3", "res4", "res5"))
    res2 = (24, 32) if style == "torchvision" else (23, 31)  # Keras: 3x3 / 2 max-pool without padding
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == {
        "res2": (256, *res2), "res3": (512, 12, 16), "res4": (1024, 6, 8), "res5": (2048, 3, 4)}
    if style == "tf":
        block = bb.layer2[0]
        assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1) and block.conv1.bias is not None
        assert bb.bn1.eps == 1e-3


def test_backbone_drop_last_stage_and_decimation() -> None:
    torch.manual_seed(0)
    short = _quiet_backbone(BackboneConfig(last_stage="res4")).eval()
    assert not hasattr(short, "layer4") and short.channels == {"res2": 256, "res3": 512, "res4": 1024}
    with pytest.raises(ValueError, match="res5"):
        short(torch.randn(1, 3, 64, 64), ("res5",))
    dec = _quiet_backbone(BackboneConfig(decimate_res4=True)).eval()
    with torch.no_grad():
        out = dec(torch.randn(1, 3, 128, 128), ("res4", "res5"))
    assert out["res4"].shape[-2:] == (4, 4) and out["res5"].shape[-2:] == (4, 4)


def test_random_init_warns_and_imagenet_file_loads(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="NO pretrained weights"):
        ResNetBackbone(BackboneConfig())
    torch.manual_seed(1)
    reference = _quiet_backbone(BackboneConfig())
    for p in reference.parameters():
        torch.nn.init.normal_(p)
    state = reference.state_dict() | {"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    path = tmp_path / "resnet50-imagenet.pth"
    torch.save(state, path)  # a torchvision-format file: our names plus the classifier
    loaded = ResNetBackbone(BackboneConfig(weights=str(path)))
    assert torch.equal(loaded.layer3[2].conv2.weight, reference.layer3[2].conv2.weight)
    bad = dict(state)
    bad.pop("layer1.0.conv1.weight")
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad\.pth.*layer1\.0\.conv1\.weight"):
        ResNetBackbone(BackboneConfig(weights=str(tmp_path / "bad.pth")))
