"""Checkpoint loading: fake official files (official names and shapes, random values) land in the right
parameters; files that do not fit give an error listing what is wrong, with the file name."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from glocal.errors import BadCheckpointError
from glocal.models.checkpoints import (
    CheckpointError,
    CheckpointMismatchError,
    canonical_tf_name,
    load_checkpoint,
    save_checkpoint,
)
from glocal.models.delg import Delg, DelgModelConfig
from glocal.models.dolg import Dolg, DolgModelConfig

NUM_CLASSES = 5
_RESNET50 = ((3, 64, 256), (4, 128, 512), (6, 256, 1024), (3, 512, 2048))  # (blocks, bottleneck, out)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def tf_delg_variables(seed: int = 0) -> dict[str, np.ndarray]:
    """The variables of TF's ``delg_model.Delg`` (ResNet-50, autoencoder, classifiers), written from the
    layer definitions of ``research/delf``: conv kernels HWIO, dense kernels (in, out)."""
    rng = np.random.default_rng(seed)
    v: dict[str, np.ndarray] = {}

    def rand(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32).astype(np.float16)

    def conv(name: str, k: int, cin: int, cout: int) -> None:
        v[f"{name}/kernel"], v[f"{name}/bias"] = rand(k, k, cin, cout), rand(cout)

    def bn(name: str, c: int) -> None:
        v[f"{name}/gamma"], v[f"{name}/beta"], v[f"{name}/moving_mean"] = rand(c), rand(c), rand(c)
        v[f"{name}/moving_variance"] = np.abs(rand(c)) + 1

    conv("backbone/conv1", 7, 3, 64)
    bn("backbone/bn_conv1", 64)
    cin = 64
    for stage, (blocks, f1, f3) in zip((2, 3, 4, 5), _RESNET50):
        for b in range(blocks):
            p = f"backbone/l{stage}{'abcdef'[b]}"
            conv(f"{p}/conv2a", 1, cin, f1), bn(f"{p}/bn2a", f1)
            conv(f"{p}/conv2b", 3, f1, f1), bn(f"{p}/bn2b", f1)
            conv(f"{p}/conv2c", 1, f1, f3), bn(f"{p}/bn2c", f3)
            if b == 0:
                conv(f"{p}/conv_shortcut", 1, cin, f3), bn(f"{p}/bn_shortcut", f3)
            cin = f3
    v["backbone/embedding_layer/kernel"], v["backbone/embedding_layer/bias"] = rand(2048, 2048), rand(2048)
    conv("attention/conv1", 1, 1024, 512), bn("attention/bn_conv1", 512), conv("attention/conv2", 1, 512, 1)
    conv("autoencoder/conv1", 1, 1024, 128), conv("autoencoder/conv2", 1, 128, 1024)
    v["cosine_weights"] = rand(2048, NUM_CLASSES)
    v["scale_factor"] = np.array(45.25, np.float32)
    v["attn_classification/kernel"], v["attn_classification/bias"] = rand(1024, NUM_CLASSES), rand(NUM_CLASSES)
    return v


def _save_tf(variables: dict[str, np.ndarray], path: Path) -> Path:
    """As read from a SavedModel: ``_model/`` prefix, attribute suffix, optimizer bookkeeping."""
    names = {f"_model/{k}/.ATTRIBUTES/VARIABLE_VALUE": a for k, a in variables.items()}
    names["save_counter/.ATTRIBUTES/VARIABLE_VALUE"] = np.array(3)
    names["optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE"] = np.array(7)
    names["_model/backbone/l2a/conv2a/kernel/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE"] = np.zeros(1)
    np.savez(path, **names)
    return path


@pytest.fixture(scope="module")
def tf_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    variables = tf_delg_variables()
    return _save_tf(variables, tmp_path_factory.mktemp("tf") / "r50delg.npz"), variables


def _tf_delg(quiet, num_classes: int = NUM_CLASSES, style: str = "tf") -> Delg:
    cfg = DelgModelConfig(backbone_style=style, block3_strides=True, num_classes=num_classes)
    return quiet(Delg, cfg)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.astype(np.float32))


def test_tf_delg_values_land_in_the_right_parameters(tf_file, quiet) -> None:
    path, v = tf_file
    model = _tf_delg(quiet)
    report = load_checkpoint(model, path)
    expected = [k for k in model.state_dict() if not k.endswith("num_batches_tracked") and k != "gem.p"]
    assert report.source == "tf-delg" and report.loaded == len(expected) == 335
    bb = model.backbone
    assert torch.equal(bb.conv1.weight, _t(v["backbone/conv1/kernel"]).permute(3, 2, 0, 1))
    assert torch.equal(bb.conv1.bias, _t(v["backbone/conv1/bias"]))
    assert torch.equal(bb.layer3[5].conv2.weight, _t(v["backbone/l4f/conv2b/kernel"]).permute(3, 2, 0, 1))
    assert torch.equal(bb.layer1[0].downsample[1].running_var, _t(v["backbone/l2a/bn_shortcut/moving_variance"]))
    assert torch.equal(bb.layer4[0].downsample[0].weight, _t(v["backbone/l5a/conv_shortcut/kernel"]).permute(3, 2, 0, 1))
    assert torch.equal(bb.layer2[3].bn3.weight, _t(v["backbone/l3d/bn2c/gamma"]))
    assert torch.equal(model.whiten.weight, _t(v["backbone/embedding_layer/kernel"]).T)
    assert torch.equal(model.attention.bn.running_mean, _t(v["attention/bn_conv1/moving_mean"]))
    assert torch.equal(model.attention.conv2.weight, _t(v["attention/conv2/kernel"]).permute(3, 2, 0, 1))
    assert torch.equal(model.autoencoder.decoder.weight[:, :, 0, 0], _t(v["autoencoder/conv2/kernel"])[0, 0].T)
    assert torch.equal(model.arcface.weight, _t(v["cosine_weights"]).T)
    assert torch.equal(model.attention_classifier.weight, _t(v["attn_classification/kernel"]).T)
    assert any("scale_factor" in n for n in report.ignored) and any("save_counter" in n for n in report.ignored)
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 96, 96))
    assert out.attention.shape == (1, 3, 3)  # block3_strides: local grid at stride 32


def test_tf_delg_into_an_inference_model_ignores_classifiers(tf_file, quiet) -> None:
    path, _ = tf_file
    report = load_checkpoint(_tf_delg(quiet, num_classes=0), path)
    assert any(n.endswith("cosine_weights/.ATTRIBUTES/VARIABLE_VALUE") for n in report.ignored)
    assert any("attn_classification" in n for n in report.ignored)


def test_bad_tf_checkpoint_lists_missing_unexpected_misshaped(tf_file, tmp_path: Path, quiet) -> None:
    _, v = tf_file
    bad = dict(v)
    del bad["backbone/l3b/bn2b/moving_mean"]
    bad["backbone/l4g/conv2a/kernel"] = bad["backbone/l4f/conv2a/kernel"]
    bad["autoencoder/conv1/kernel"] = np.zeros((1, 1, 1024, 64), np.float16)
    path = _save_tf(bad, tmp_path / "broken_delg.npz")
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(_tf_delg(quiet), path)
    e = err.value
    assert "broken_delg.npz" in str(e)
    assert e.missing == ["backbone.layer2.1.bn2.running_mean"]
    assert e.unexpected == ["_model/backbone/l4g/conv2a/kernel/.ATTRIBUTES/VARIABLE_VALUE"]
    assert len(e.misshaped) == 1 and "autoencoder.encoder.weight" in e.misshaped[0] and "(64, 1024, 1, 1)" in e.misshaped[0]
    with pytest.raises(CheckpointMismatchError, match="backbone_style='tf'"):
        load_checkpoint(_tf_delg(quiet, style="torchvision"), tf_file[0])


@pytest.mark.parametrize("raw,canonical", [
    ("DELG/backbone/l4c/conv2b/kernel:0", "backbone/l4c/conv2b/kernel"),
    ("backbone/res4c_branch2b/kernel:0", "backbone/l4c/conv2b/kernel"),
    ("bn5a_branch1/moving_variance", "backbone/l5a/bn_shortcut/moving_variance"),
    ("res2a_branch1/bias", "backbone/l2a/conv_shortcut/bias"),
    ("conv1/kernel", "backbone/conv1/kernel"),
    ("attention/attn_conv1/kernel", "attention/conv1/kernel"),
    ("autoencoder/autoenc_conv2/bias", "autoencoder/conv2/bias"),
    ("att_fc/kernel", "attn_classification/kernel"),
    ("model/attention/bn_conv1/gamma/.ATTRIBUTES/VARIABLE_VALUE", "attention/bn_conv1/gamma"),
    ("save_counter/.ATTRIBUTES/VARIABLE_VALUE", None),
])
def test_tf_name_forms(raw: str, canonical: str | None) -> None:
    assert canonical_tf_name(raw) == canonical


def dolg_port_state(with_aspp: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """``model_state`` of the PyTorch DOLG port (pycls ResNet-50 ``globalmodel``, ``localmodel``, heads)."""
    g = torch.Generator().manual_seed(seed)
    s: dict[str, torch.Tensor] = {}

    def conv(name: str, cout: int, cin: int, k: int, bias: bool = False) -> None:
        s[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g).half()
        if bias:
            s[f"{name}.bias"] = torch.randn(cout, generator=g)

    def bn(name: str, c: int) -> None:
        for what in ("weight", "bias", "running_mean"):
            s[f"{name}.{what}"] = torch.randn(c, generator=g)
        s[f"{name}.running_var"] = torch.rand(c, generator=g) + 1
        s[f"{name}.num_batches_tracked"] = torch.tensor(100)

    conv("globalmodel.stem.conv", 64, 3, 7)
    bn("globalmodel.stem.bn", 64)
    w_in = 64
    for k, (blocks, w_b, w_out) in enumerate(_RESNET50, start=1):
        for j in range(1, blocks + 1):
            p = f"globalmodel.s{k}.b{j}"
            if j == 1:
                conv(f"{p}.proj", w_out, w_in, 1), bn(f"{p}.bn", w_out)
            conv(f"{p}.f.a", w_b, w_in if j == 1 else w_out, 1), bn(f"{p}.f.a_bn", w_b)
            conv(f"{p}.f.b", w_b, w_b, 3), bn(f"{p}.f.b_bn", w_b)
            conv(f"{p}.f.c", w_out, w_b, 1), bn(f"{p}.f.c_bn", w_out)
        w_in = w_out
    if with_aspp:
        conv("localmodel.aspp.aspp.0", 512, 1024, 1, bias=True)
        for i in (1, 2, 3):
            conv(f"localmodel.aspp.aspp.{i}", 512, 1024, 3, bias=True)
        conv("localmodel.aspp.im_pool.1", 512, 1024, 1, bias=True)
        conv("localmodel.aspp.conv_after.0", 1024, 5 * 512, 1, bias=True)
    conv("localmodel.conv1", 1024, 1024, 1, bias=True)
    bn("localmodel.bn", 1024)
    conv("localmodel.conv2", 1, 1024, 1, bias=True)
    s["pool_g.p"] = torch.tensor([3.3])
    s["fc_t.weight"], s["fc_t.bias"] = torch.randn(1024, 2048, generator=g), torch.randn(1024, generator=g)
    s["fc.weight"], s["fc.bias"] = torch.randn(512, 2048, generator=g), torch.randn(512, generator=g)
    s["desc_cls.weight"], s["desc_cls.t"] = torch.randn(NUM_CLASSES, 512, generator=g), torch.zeros(1)
    return s


@pytest.mark.parametrize("with_aspp", [False, True])
def test_dolg_port_values_land_in_the_right_parameters(tmp_path: Path, with_aspp: bool, quiet) -> None:
    state = dolg_port_state(with_aspp)
    path = tmp_path / "r50_dolg_512.pyth"
    torch.save({"epoch": 99, "model_state": state, "optimizer_state": {"state": {}, "param_groups": []}}, path)
    cfg = DolgModelConfig(multi_atrous=with_aspp, atrous_pointwise_branch=with_aspp, num_classes=NUM_CLASSES)
    model = quiet(Dolg, cfg)
    report = load_checkpoint(model, path)
    assert report.source == "dolg-port" and report.ignored == ("desc_cls.t",)
    bb = model.backbone
    assert torch.equal(bb.conv1.weight, state["globalmodel.stem.conv.weight"].float())
    assert torch.equal(bb.layer3[4].conv2.weight, state["globalmodel.s3.b5.f.b.weight"].float())
    assert torch.equal(bb.layer4[0].downsample[1].running_mean, state["globalmodel.s4.b1.bn.running_mean"])
    assert torch.equal(bb.layer1[2].bn3.num_batches_tracked, torch.tensor(100))
    assert torch.equal(model.local_conv.bias, state["localmodel.conv1.bias"])
    assert torch.equal(model.local_bn.running_var, state["localmodel.bn.running_var"])
    assert torch.equal(model.attention_conv.weight, state["localmodel.conv2.weight"].float())
    assert float(model.global_pool.p) == pytest.approx(3.3)
    assert torch.equal(model.global_fc.weight, state["fc_t.weight"]) and torch.equal(model.fusion_fc.bias, state["fc.bias"])
    assert torch.equal(model.arcface.weight, state["desc_cls.weight"])
    if with_aspp:
        assert torch.equal(model.multi_atrous.dilated[1].weight, state["localmodel.aspp.aspp.2.weight"].float())
        assert torch.equal(model.multi_atrous.fuse.weight, state["localmodel.aspp.conv_after.0.weight"].float())
        assert torch.equal(model.multi_atrous.image_pool.bias, state["localmodel.aspp.im_pool.1.bias"])
    else:
        with pytest.raises(CheckpointMismatchError, match=r"r50_dolg_512\.pyth.*multi_atrous=False"):
            load_checkpoint(quiet(Dolg, DolgModelConfig()), path)


def test_glocal_round_trip_and_family_check(tmp_path: Path, quiet) -> None:
    torch.manual_seed(0)
    a = quiet(Delg, DelgModelConfig(num_classes=3))
    save_checkpoint(a, tmp_path / "delg.pt")
    torch.manual_seed(1)
    b = quiet(Delg, DelgModelConfig(num_classes=3))
    assert load_checkpoint(b, tmp_path / "delg.pt").source == "glocal"
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    save_checkpoint(quiet(Dolg, DolgModelConfig()), tmp_path / "dolg.pt")
    with pytest.raises(CheckpointError, match=r"dolg\.pt.*glocal/dolg/1.*delg"):
        load_checkpoint(b, tmp_path / "dolg.pt")
    with pytest.raises(BadCheckpointError, match="nope.pt"):
        load_checkpoint(b, tmp_path / "nope.pt")


def test_every_torch_load_is_weights_only() -> None:
    root = Path(__file__).resolve().parents[2] / "glocal"
    for name in ("models/checkpoints.py", "models/layers/backbone.py", "models/delg.py", "models/dolg.py"):
        for call in re.findall(r"torch\.load\([^)]*\)", (root / name).read_text()):
            assert "weights_only=True" in call, f"{name}: {call}"
