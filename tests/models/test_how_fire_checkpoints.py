"""Official HOW / FIRe checkpoints (fake files with the official names and shapes) and our format."""
from __future__ import annotations

import collections
import pathlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glocal.models.fire import FireConfig, FireExtractor, FireNet
from glocal.models.how import HowConfig, HowExtractor, HowNet, build_trunk
from glocal.models.how_fire_checkpoints import (
    CheckpointError,
    convert_official_state_dict,
    detect_format,
    load_into,
    read_checkpoint,
    save_glocal_checkpoint,
)
from glocal.models.layers.lit import LitConfig

N_TEMPLATES, ITERATIONS = 16, 2
HOW_EXPECTED = {"depth": 50, "output_dim": 128, "smoothing_kernel": 3}
FIRE_EXPECTED = {"depth": 50, "output_dim": 128, "num_templates": N_TEMPLATES, "iterations": ITERATIONS, "lit_dim": 1024}


@pytest.fixture(scope="module")
def features_state() -> dict[str, Tensor]:
    """``features.*`` of the reference code: torchvision ResNet-50 children without avgpool, fc, layer4 (conv1,
    bn1, relu, maxpool, layer1..3; our ResNet has the same modules and names)."""
    torch.manual_seed(0)
    r = build_trunk()
    features = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3)
    return {f"features.{k}": (torch.rand_like(v) + 0.5) if v.is_floating_point() else v
            for k, v in features.state_dict().items()}


def _whitening(prefix: str = "dim_reduction") -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(1)
    return {f"{prefix}.weight": torch.randn(128, 1024, 1, 1, generator=g), f"{prefix}.bias": torch.randn(128, generator=g)}


def _lit_state() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(2)
    d, n = 1024, N_TEMPLATES
    shapes = {
        "lit.templates_init": (1, n, d), "lit.project_q.weight": (d, d), "lit.project_k.weight": (d, d),
        "lit.project_v.weight": (d, d), "lit.norm_inputs.weight": (d,), "lit.norm_inputs.bias": (d,),
        "lit.norm_templates.weight": (d,), "lit.norm_templates.bias": (d,), "lit.norm_mlp.weight": (d,),
        "lit.norm_mlp.bias": (d,), "lit.mlp.0.weight": (d // 2, d), "lit.mlp.0.bias": (d // 2,),
        "lit.mlp.2.weight": (d, d // 2), "lit.mlp.2.bias": (d,),
    }
    return {k: torch.randn(*s, generator=g) * 0.05 for k, s in shapes.items()}


def _official(state: dict[str, Tensor], version: str | None, net_params: dict | None, meta: dict) -> dict:
    ckpt: dict = {"epoch": 20, "meta": meta, "state_dict": state, "best_score": np.float64(0.81),
                  "scores": collections.defaultdict(list, {"train_loss": [(1, np.float64(0.5))]}),
                  "optimizer": {"state": {}, "param_groups": [{"lr": 1e-6, "params": [0, 1]}]}}
    if version is not None:
        ckpt["_version"] = version
        ckpt["net_params"] = net_params
    return ckpt


def _how_params() -> dict:
    return {"architecture": "resnet50", "pretrained": True, "skip_layer": 1, "dim_reduction": {"dim": 128},
            "smoothing": {"kernel_size": 3},
            "runtime": {"mean_std": [[0.485, 0.456, 0.406], [0.229, 0.224, 0.225]], "image_size": 1024,
                        "features_num": 1000, "scales": [2.0, 1.414, 1.0, 0.707, 0.5, 0.353, 0.25],
                        "training_scales": [1]}}


def _fire_params(iterations: int = ITERATIONS) -> dict:
    params = _how_params()
    del params["smoothing"]
    params["pretrained"] = pathlib.PosixPath("/data/fire_data/pretraining/fire_imagenet.pth")
    params["lit"] = {"T": iterations, "N": N_TEMPLATES, "dim": 1024}
    return params


@pytest.fixture(scope="module")
def how_net() -> HowNet:
    return HowNet(build_trunk())


@pytest.fixture(scope="module")
def fire_net() -> FireNet:
    return FireNet(build_trunk(), LitConfig(num_templates=N_TEMPLATES, iterations=ITERATIONS))


def _assert_backbone_landed(net: nn.Module, features: dict[str, Tensor]) -> None:
    own = net.state_dict()
    for theirs, ours in (("features.0.weight", "backbone.conv1.weight"), ("features.1.running_var", "backbone.bn1.running_var"),
                         ("features.4.0.downsample.0.weight", "backbone.layer1.0.downsample.0.weight"),
                         ("features.5.3.bn2.bias", "backbone.layer2.3.bn2.bias"),
                         ("features.6.5.conv3.weight", "backbone.layer3.5.conv3.weight")):
        assert torch.equal(own[ours], features[theirs]), ours
    n_backbone = sum(1 for k in own if k.startswith("backbone."))
    assert n_backbone == len(features)


def test_how_official_checkpoint(features_state: dict[str, Tensor], tmp_path: Path) -> None:
    path = tmp_path / "how_r50-_1000.pth"
    whitening = _whitening()
    torch.save(_official({**features_state, **whitening}, "how/2020", _how_params(),
                         {"architecture": "resnet50", "outputdim": 128}), path)
    ckpt = read_checkpoint(path)
    assert detect_format(ckpt) == "how-official" and isinstance(ckpt["scores"], dict)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no random-init, no unfitted-whitening warning
        extractor = HowExtractor(HowConfig(checkpoint=path, scales=(1.0,)))
    _assert_backbone_landed(extractor.net, features_state)
    assert torch.equal(extractor.net.whiten.weight, whitening["dim_reduction.weight"][:, :, 0, 0])
    assert torch.equal(extractor.net.whiten.bias, whitening["dim_reduction.bias"])
    assert bool(extractor.net.whiten.fitted)


def test_how_old_format_and_bare_state_dict(features_state: dict[str, Tensor], how_net: HowNet, tmp_path: Path) -> None:
    old = tmp_path / "old.pth"
    meta = {"architecture": "resnet50", "skip_layer": 1, "dim": 128, "feat_pool_k": 3,
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    state = {f"module.{k}": v for k, v in {**features_state, **_whitening("whiten")}.items()}
    torch.save(_official(state, None, None, meta), old)
    info = load_into(how_net, old, "how", HOW_EXPECTED)
    assert info["format"] == "how-official" and info["hyper_parameters"]["smoothing_kernel"] == 3
    _assert_backbone_landed(how_net, features_state)
    with pytest.raises(CheckpointError, match="smoothing_kernel = 1 in the config but 3 in the file"):
        load_into(how_net, old, "how", {**HOW_EXPECTED, "smoothing_kernel": 1})
    bare = tmp_path / "bare.pth"
    torch.save({**features_state, **_whitening()}, bare)
    assert load_into(how_net, bare, "how", HOW_EXPECTED)["format"] == "how-official"


def _official_lit(state: dict[str, Tensor], u: Tensor, iterations: int) -> Tensor:
    """FIRe eq. 3-5 computed straight from the official tensors (independent of our module)."""
    def ln(x: Tensor, name: str) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], state[f"lit.{name}.weight"], state[f"lit.{name}.bias"])
    x = ln(u, "norm_inputs")
    k, v = x @ state["lit.project_k.weight"].T, x @ state["lit.project_v.weight"].T
    q = state["lit.templates_init"]
    for _ in range(iterations):
        m = ln(q, "norm_templates") @ state["lit.project_q.weight"].T @ k.transpose(1, 2) / 32.0   # (1, N, L)
        alpha = m.softmax(dim=1) + 1e-8
        alpha = alpha / alpha.sum(dim=2, keepdim=True)
        psi = alpha @ v + q
        hidden = F.relu(ln(psi, "norm_mlp") @ state["lit.mlp.0.weight"].T + state["lit.mlp.0.bias"])
        q = psi + hidden @ state["lit.mlp.2.weight"].T + state["lit.mlp.2.bias"]
    return q


def test_fire_official_checkpoint(features_state: dict[str, Tensor], fire_net: FireNet, tmp_path: Path) -> None:
    path = tmp_path / "fire.pth"
    lit = _lit_state()
    meta = {"architecture": "resnet50", "backbone_dim": 1024, "outputdim": 128, "corercf_size": 16}
    torch.save(_official({**features_state, **lit, **_whitening()}, "fire/2021", _fire_params(), meta), path)
    info = load_into(fire_net, path, "fire", FIRE_EXPECTED)
    assert info["format"] == "fire-official" and info["version"] == "fire/2021"
    _assert_backbone_landed(fire_net, features_state)
    own = fire_net.state_dict()
    assert torch.equal(own["lit.templates"], lit["lit.templates_init"][0])
    assert torch.equal(own["lit.mlp.0.weight"], lit["lit.norm_mlp.weight"])
    assert torch.equal(own["lit.mlp.1.weight"], lit["lit.mlp.0.weight"])
    assert torch.equal(own["lit.mlp.3.bias"], lit["lit.mlp.2.bias"])
    assert torch.equal(own["lit.to_key.weight"], lit["lit.project_k.weight"])
    assert torch.equal(own["lit.norm_query.bias"], lit["lit.norm_templates.bias"])
    u = torch.randn(1, 10, 1024, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = fire_net.lit.forward_set(u).features
    assert torch.allclose(ours, _official_lit(lit, u, ITERATIONS), atol=1e-4)
    # through the extractor: T recorded in the file must match the config
    with pytest.raises(CheckpointError, match="iterations = 6 in the config but 2 in the file"):
        FireExtractor(FireConfig(checkpoint=path, num_templates=N_TEMPLATES))
    with pytest.raises(CheckpointError, match="official FIRE checkpoint; use method 'fire'"):
        load_into(HowNet(nn.Identity()), path, "how", HOW_EXPECTED)


def test_misfit_lists_missing_unexpected_misshaped(features_state: dict[str, Tensor], how_net: HowNet,
                                                   tmp_path: Path) -> None:
    state = {**features_state, **_whitening()}
    del state["features.6.5.bn3.weight"]
    state["features.6.0.conv1.weight"] = torch.zeros(3, 3, 1, 1)
    state["features.7.0.conv1.weight"] = torch.zeros(1)       # a layer4 block: R50 not R50-
    state["attention.extra"] = torch.zeros(1)
    path = tmp_path / "broken_how.pth"
    torch.save(_official(state, "how/2020", _how_params(), {}), path)
    with pytest.raises(CheckpointError) as err:
        load_into(how_net, path, "how", HOW_EXPECTED)
    message = str(err.value)
    assert str(path) in message
    assert "missing 1 ['backbone.layer3.5.bn3.weight']" in message
    assert "features.7.0.conv1.weight" in message and "attention.extra" in message
    assert "backbone.layer3.0.conv1.weight: file (3, 3, 1, 1) vs model (256, 512, 1, 1)" in message


class _Arbitrary:
    def __init__(self) -> None:
        self.x = 1


def test_refuses_unsafe_pickles_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "obj": _Arbitrary()}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pth")
    text = tmp_path / "text.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="text.pth"):
        read_checkpoint(text)


def test_glocal_format_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = FireNet(nn.Conv2d(3, 8, 16, stride=16), LitConfig(num_templates=4, iterations=2, input_dim=8, dim=8), 4)
    path = save_glocal_checkpoint(tmp_path / "fire_glocal.pt", net, "fire", {"iterations": 2, "scales": (1.0,)})
    other = FireNet(nn.Conv2d(3, 8, 16, stride=16), LitConfig(num_templates=4, iterations=2, input_dim=8, dim=8), 4)
    assert load_into(other, path, "fire", {"iterations": 2})["format"] == "glocal"
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in net.state_dict().items())
    with pytest.raises(CheckpointError, match="iterations = 3 in the config but 2 in the file"):
        load_into(other, path, "fire", {"iterations": 3})
    with pytest.raises(CheckpointError, match="glocal 'fire' checkpoint, not 'how'"):
        load_into(other, path, "how", {})
    converted, unknown = convert_official_state_dict({"lit.templates_init": torch.zeros(1, 4, 8), "x.y": torch.zeros(1)})
    assert converted["lit.templates"].shape == (4, 8) and unknown == ["x.y"]
