"""DELG: shapes and norms, the stop-gradient rule, training on synthetic data, the extractor."""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch

from glocal.io.images import LoadedImage
from glocal.methods import create_extractor
from glocal.models.delg import Delg, DelgConfig, DelgExtractor, DelgModelConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def model(quiet) -> Delg:
    torch.manual_seed(0)
    return quiet(Delg, DelgModelConfig(num_classes=4))


def _synthetic(n: int, classes: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class = a colour and a texture of its own, plus per-image noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    colour = torch.randn(classes, 3, 1, 1, generator=g)
    texture = torch.randn(classes, 3, size, size, generator=g)
    return colour[labels] + 0.5 * texture[labels] + 0.3 * torch.randn(n, 3, size, size, generator=g), labels


@pytest.mark.parametrize("size", [(64, 64), (96, 128), (160, 112)])
def test_output_shapes_and_norms(model: Delg, size: tuple[int, int]) -> None:
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    h, w = -(-size[0] // 16), -(-size[1] // 16)
    assert out.global_descriptor.shape == (2, 2048)
    assert out.attention.shape == (2, h, w) and bool((out.attention > 0).all())  # softplus
    assert out.local_descriptors.shape == (2, h, w, 128)
    assert torch.allclose(out.global_descriptor.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(out.local_descriptors.norm(dim=-1), torch.ones(2, h, w), atol=1e-5)
    only_global = model(torch.randn(1, 3, *size), with_local=False)
    assert only_global.attention is None and only_global.global_descriptor.shape == (1, 2048)


def test_local_losses_do_not_reach_the_backbone(model: Delg) -> None:
    model.train()
    x, labels = _synthetic(4, 4, 64, seed=1)
    losses = model.losses(x, labels)
    model.zero_grad()
    (losses["attention"] + losses["reconstruction"]).backward(retain_graph=True)
    assert all(p.grad is None or not p.grad.any() for p in model.backbone.parameters())
    for head in (model.attention, model.autoencoder, model.attention_classifier):
        assert all(p.grad is not None and p.grad.any() for p in head.parameters())
    model.zero_grad()
    losses["global"].backward()
    assert model.backbone.layer3[0].conv2.weight.grad.abs().sum() > 0
    assert model.backbone.layer4[2].conv3.weight.grad.abs().sum() > 0
    assert all(p.grad is None or not p.grad.any() for p in model.autoencoder.parameters())


def test_training_lowers_every_loss(quiet) -> None:
    """End-to-end Adam steps on synthetic data (4 classes, 8 images of 64 x 64) lower the three losses.

    Only 15 steps (not hundreds): a real ResNet-50 step takes ~0.8 s on one busy CPU core.
    """
    torch.manual_seed(0)
    net = quiet(Delg, DelgModelConfig(num_classes=4)).train()
    x, labels = _synthetic(8, 4, 64, seed=2)
    backbone = [p for n, p in net.named_parameters() if n.startswith("backbone.")]
    heads = [p for n, p in net.named_parameters() if not n.startswith("backbone.")]
    opt = torch.optim.Adam([{"params": backbone, "lr": 1e-4}, {"params": heads, "lr": 1e-3}])
    history = []
    for _ in range(15):
        losses = net.losses(x, labels)
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    for name in ("global", "attention", "reconstruction", "total"):
        first, last = history[0][name], np.mean([h[name] for h in history[-3:]])
        assert last < 0.85 * first, f"{name}: {first:.4f} -> {last:.4f}"


def _image(h: int, w: int, scale: float = 0.5, offset: tuple[float, float] = (10.0, 20.0)) -> LoadedImage:
    pixels = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return LoadedImage(pixels, (round(h / scale), round(w / scale)), scale, offset)


@pytest.fixture(scope="module")
def extractor(quiet) -> DelgExtractor:
    conf = dict(scales=(0.7071, 1.0), global_scales=(1.0,), attention_threshold=0.0, max_keypoints=40)
    return quiet(create_extractor, "delg", **conf)


def test_extractor_features_in_original_pixels(extractor: DelgExtractor) -> None:
    image = _image(80, 112)
    feats = extractor.extract(image, "a")
    assert feats.global_descriptor.shape == (1, 2048)
    assert np.linalg.norm(feats.global_descriptor) == pytest.approx(1.0, abs=1e-5)
    assert feats.descriptors.shape == (40, 128) and feats.descriptors.dtype == np.float32
    assert np.allclose(np.linalg.norm(feats.descriptors, axis=1), 1.0, atol=1e-5)
    assert np.all(np.diff(feats.strengths) <= 0)  # strongest first
    # keypoints: receptive-field centres (offset 0, stride 16 for torchvision ResNet-50) of the
    # 1.0 level (1 / 0.5 = 2 original px per level px) or the 0.7071 level, mapped to the original;
    # scales: the 16-px cell in original pixels
    rf_y, rf_x = extractor.model.receptive_fields((80, 112))
    assert (rf_y.offset, rf_y.stride, rf_x.offset) == (0.0, 16.0, 0.0)
    at_one = np.isclose(feats.scales, 32.0)
    grid = (feats.keypoints[at_one] - np.array([10.0, 20.0])) * 0.5 / 16
    assert np.allclose(grid, np.round(grid)) and at_one.any()
    assert np.all(at_one | np.isclose(feats.scales, 32 / 0.7071))
    assert (feats.keypoints[:, 0] < 10 + 224).all() and (feats.keypoints[:, 1] < 20 + 160).all()


def test_extractor_batch_threshold_and_rebuild(extractor: DelgExtractor, quiet) -> None:
    images = [_image(64, 64), _image(64, 64, offset=(0.0, 0.0)), _image(48, 80)]
    batch = extractor.extract_batch(images, ["a", "b", "c"])
    single = extractor.extract(images[2], "c")
    assert np.allclose(batch[2].global_descriptor, single.global_descriptor, atol=1e-5)
    assert np.allclose(batch[0].keypoints - batch[1].keypoints, [10.0, 20.0])
    strict = DelgExtractor.__new__(DelgExtractor)
    strict.__dict__.update(extractor.__dict__)
    strict.config = DelgConfig(**(asdict(extractor.config) | {"attention_threshold": 1e9}))
    assert strict.extract(images[0], "a").num_features == 0
    rebuilt = quiet(create_extractor, "delg", **asdict(extractor.config))
    assert rebuilt.config == extractor.config
    assert np.allclose(rebuilt.extract(images[0], "a").global_descriptor, batch[0].global_descriptor, atol=1e-5)


def test_delg_star_packs_sign_bits(extractor: DelgExtractor, quiet) -> None:
    star = quiet(create_extractor, "delg-star", **asdict(extractor.config))
    assert star.name == "delg-star" and star.config.binarize
    image = _image(64, 96)
    full, packed = extractor.extract(image, "a"), star.extract(image, "a")
    assert packed.descriptors.shape == (full.num_features, 16) and packed.descriptors.dtype == np.uint8
    assert np.array_equal(packed.descriptors, np.packbits(full.descriptors > 0, axis=1))
    assert np.allclose(packed.keypoints, full.keypoints)


def test_tf_release_preset() -> None:
    cfg = DelgConfig.tf_release("r50delg.npz", gldv2_clean=True, device="cpu")
    assert (cfg.backbone_style, cfg.block3_strides, cfg.preprocessing, cfg.attention_threshold) == \
        ("tf", True, "tf", 454.6)


def test_random_weights_warn() -> None:
    with pytest.warns(UserWarning, match="RANDOM"):
        create_extractor("delg", scales=(1.0,), global_scales=(1.0,))
