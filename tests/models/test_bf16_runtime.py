"""runtime="torch-bf16": the networks run under bfloat16 autocast and give float32 features close to float32's."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from glocal.io.images import LoadedImage
from glocal.methods import create_extractor
from glocal.models import extractor_base
from glocal.models.delg import DelgConfig
from glocal.models.fire import FireConfig, FireExtractor
from glocal.models.how import HowConfig, HowExtractor, trunk_forward

pytestmark = pytest.mark.usefixtures("torch_one_thread")

DELG = dict(scales=(1.0,), global_scales=(1.0,), attention_threshold=0.0, max_keypoints=30, max_side=128)
VITGAL = dict(embed_dim=48, depth=1, num_heads=4, local_dim=16, scales=(1.0,), global_scales=(1.0,),
              max_keypoints=30, max_side=128)


def _image(h: int = 96, w: int = 128, seed: int = 0) -> LoadedImage:
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return LoadedImage(pixels, (2 * h, 2 * w), 0.5, (3.0, 5.0))


@pytest.mark.parametrize(("method", "conf"), [("delg", DELG), ("dolg", dict(scales=(1.0,), max_side=128)),
                                              ("vitgal", VITGAL)])
def test_global_local_models_in_bf16_are_close_to_float32(method: str, conf: dict, quiet) -> None:
    fp32 = quiet(create_extractor, method, **conf)
    bf16 = quiet(create_extractor, method, **conf, runtime="torch-bf16")
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    flags = (True, True) if method != "dolg" else ()
    with torch.inference_mode():
        want, got = fp32._run_model(x, flags), bf16._run_model(x, flags)
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == torch.float32 and got[k].shape == want[k].shape
        assert not torch.equal(got[k], want[k]), f"{k}: identical, so bfloat16 was not used"
    g32, g16 = want["global_descriptor"], got["global_descriptor"]
    assert float((g32 * g16).sum() / (g32.norm() * g16.norm())) > 0.999
    a, b = fp32.extract(_image(), "a"), bf16.extract(_image(), "a")
    assert b.global_descriptor.dtype == np.float32
    assert float(a.global_descriptor.ravel() @ b.global_descriptor.ravel()) > 0.999


def test_how_and_fire_run_the_trunk_in_bf16_and_the_heads_in_float32(quiet) -> None:
    trunk = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(), nn.Conv2d(8, 24, 3, stride=4, padding=1))
    x = torch.rand(1, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        plain, half = trunk_forward(trunk, x), trunk_forward(trunk, x, bf16=True)
    assert half.dtype == torch.float32 and not torch.equal(plain, half)
    assert torch.allclose(plain, half, rtol=0.05, atol=0.05)

    image = _image()
    how = [quiet(HowExtractor, HowConfig(scales=(1.0,), max_keypoints=20, output_dim=16, runtime=r), trunk=trunk, feature_dim=24)
           for r in ("torch", "torch-bf16")]
    a, b = (e.extract(image, "a") for e in how)
    assert b.descriptors.dtype == np.float32
    assert np.allclose(np.linalg.norm(b.descriptors, axis=1), 1.0, atol=1e-5)  # normalised in float32
    shared = [(i, j) for i, k in enumerate(a.keypoints) for j, m in enumerate(b.keypoints) if np.allclose(k, m)]
    assert len(shared) >= 10
    assert np.median([a.descriptors[i] @ b.descriptors[j] for i, j in shared]) > 0.99

    conf = dict(scales=(1.0,), max_keypoints=12, num_templates=12, iterations=2, output_dim=16, lit_dim=24)
    fire = [quiet(FireExtractor, FireConfig(**conf, runtime=r), trunk=trunk, feature_dim=24) for r in ("torch", "torch-bf16")]
    assert fire[1].net.trunk_bf16 and not fire[0].net.trunk_bf16
    with torch.inference_mode():
        sf = fire[1].net.super_features(x)
    assert sf.attention.dtype == torch.float32 and sf.descriptors.dtype == torch.float32
    assert torch.allclose(sf.attention.flatten(2).sum(-1), torch.ones(1, 12), atol=1e-5)  # eq. 4 in float32
    a, b = (e.extract(image, "a") for e in fire)
    assert float(np.median(np.sum(a.descriptors * b.descriptors, axis=1))) > 0.99  # Super-features keep their order


def test_runtime_values_are_checked_and_emulated_bf16_warns(monkeypatch: pytest.MonkeyPatch, quiet) -> None:
    assert DelgConfig(runtime="torch-bf16").runtime == "torch-bf16"
    with pytest.raises(ValueError, match="runtime must be one of"):
        DelgConfig(runtime="bf16")
    with pytest.raises(ValueError, match="runtime must be 'torch' or 'torch-bf16'"):
        HowConfig(runtime="onnx")
    monkeypatch.setattr(extractor_base, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="emulated and slower"):
        create_extractor("dolg", scales=(1.0,), max_side=128, runtime="torch-bf16")
