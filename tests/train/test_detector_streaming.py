"""``glocal train d2r`` reads its images per batch (:mod:`glocal.train.detector_images`): the weights equal, bit
for bit, those of the same loop over images all decoded up front, whatever ``workers`` and ``cache_images``; the
box file is read without pixels and at most ``cache_images`` decoded images are kept; a file whose body is
corrupt is reported once, left out of its batch, recorded in the checkpoint (a resumed run still ends with the
weights of the whole one) and in the model card."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
from glocal.cli.main import app  # noqa: E402
from glocal.io.images import load_image  # noqa: E402
from glocal.methods import get  # noqa: E402
from glocal.train import detector_run  # noqa: E402
from glocal.train.detector_data import (  # noqa: E402
    AugmentConfig,
    BoxAnnotation,
    DetectorBoxDataset,
    read_boxes,
    synthetic_box_images,
)
from glocal.train.detector_images import BoxData, BoxImages, read_box_data  # noqa: E402
from glocal.train.detector_loop import DetectorTrainConfig, fit_detector  # noqa: E402
from glocal.train.detector_run import build_detector, split_images  # noqa: E402
from glocal.train.session import RunSettings, train_method  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")
TINY_SETTINGS = {"head_width": 16, "head_depth": 1, "pretrained_backbone": False, "score_threshold": 0.0,
                 "min_box_size": 1}
TINY = ["--image-size", "80", "--batch", "2", *(w for k, v in TINY_SETTINGS.items()
                                                for w in ("--set", f"{k}={json.dumps(v)}"))]


def write_boxes(root: Path, n: int) -> Path:
    """``n`` generated 96 x 128 images (JPEG and PNG, decoded smaller at ``--image-size 80``: the boxes are
    scaled) and their ``boxes.csv``."""
    root.mkdir(parents=True, exist_ok=True)
    images, anns = synthetic_box_images(n, seed=2)
    rows = ["id,x1,y1,x2,y2"]
    for k, ann in enumerate(anns):
        Image.fromarray(images[ann.image_id]).save(root / f"{ann.image_id}.{'png' if k % 2 else 'jpg'}")
        rows.append(",".join([ann.image_id, *(str(int(v)) for v in ann.boxes[0])]))
    (root / "boxes.csv").write_text("\n".join(rows) + "\n")
    return root / "boxes.csv"


def settings(boxes: Path, steps: int, **train: object) -> RunSettings:
    return RunSettings(method="d2r", data=str(boxes), settings=dict(TINY_SETTINGS), eval_fraction=0.25, command="t",
                       train={"steps": steps, "batch": 2, "image_size": 80, "checkpoint_every": 1, "eval_every": 2,
                              "seed": 5, **train})


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["state_dict"]


def in_memory_weights(boxes: Path, steps: int) -> dict:
    """The loop over a dataset whose images are all decoded first (what ``glocal train d2r`` did before it
    streamed): each image at longer side ``image_size``, its boxes scaled to those pixels."""
    run_settings = settings(boxes, steps)
    config = DetectorTrainConfig.from_settings(run_settings.train, "detector")
    detector, _ = build_detector(run_settings.settings, config, lambda line: None)
    anns = {a.image_id: a for a in read_boxes(boxes)}
    ids = list(anns)
    pixels, scaled = [], []
    for image_id in ids:
        image = load_image(next(boxes.parent.glob(f"{image_id}.*")), max_side=config.image_size)
        (h0, w0), (h, w) = image.original_size, image.pixels.shape[:2]
        pixels.append(image.pixels)
        scaled.append((anns[image_id].pixel_boxes(w0, h0) * np.array([w / w0, h / h0] * 2, np.float32)).astype(np.float32))
    train, held = split_images(len(ids), run_settings.eval_fraction, config.seed)
    memory = {ids[i]: pixels[i] for i in train}
    dataset = DetectorBoxDataset([BoxAnnotation(ids[i], scaled[i], False) for i in train], memory.__getitem__,
                                 AugmentConfig(config.image_size // 2, config.image_size, config.flip_prob), config.seed)
    fit_detector(detector, dataset, config, None, [(pixels[i], scaled[i]) for i in held])
    return {k: v.detach().cpu() for k, v in detector.state_dict().items()}


def test_streamed_weights_equal_the_in_memory_loop_whatever_workers_and_cache(tmp_path: Path) -> None:
    boxes = write_boxes(tmp_path / "photos", n=8)  # 6 training images, batch 2, 3 steps: one epoch
    expected = in_memory_weights(boxes, steps=3)
    for workers, cache in ((0, 0), (2, 8), (2, 1)):
        got = weights(train_method(get("d2r"), settings(boxes, 3, workers=workers, cache_images=cache),
                                   tmp_path / f"run-{workers}-{cache}")[0])
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in got), (workers, cache)
    card = json.loads((tmp_path / "run-2-8" / "model_card.json").read_text())
    assert card["train"]["workers"] == 2 and card["train"]["cache_images"] == 8 and card["skipped_files"] == []


def test_the_box_file_is_read_without_pixels_and_the_cache_stays_bounded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    boxes = write_boxes(tmp_path / "photos", n=8)
    data = read_box_data(boxes, None, workers=2)
    assert data.ids == [f"im{k}" for k in range(8)] and data.sizes == [(96, 128)] * 8
    arrays = [f.name for f in dataclasses.fields(BoxData) for v in getattr(data, f.name)
              if isinstance(v, np.ndarray) and v.ndim == 3]
    assert arrays == [] and all(a.boxes.shape == (1, 4) for a in data.annotations)  # boxes as the file gives them

    largest, decoded = [0], set()

    class Watched(BoxImages):
        def _read(self, i: int) -> np.ndarray:
            decoded.add(self.files[i])
            return super()._read(i)

        def get(self, i: int) -> np.ndarray | None:
            got = super().get(i)
            largest[0] = max(largest[0], len(self.cache))
            return got

    monkeypatch.setattr(detector_run, "BoxImages", Watched)
    train_method(get("d2r"), settings(boxes, 4, workers=2, cache_images=2), tmp_path / "run")
    assert largest[0] == 2 and len(decoded) == 8  # every image decoded (training and held out), never over 2 kept


def test_a_corrupt_body_is_skipped_once_listed_and_kept_across_a_resume(tmp_path: Path) -> None:
    boxes = write_boxes(tmp_path / "photos", n=8)
    bad = tmp_path / "photos" / "im4.jpg"
    bad.write_bytes(bad.read_bytes()[:len(bad.read_bytes()) // 2])  # the header reads, the body is cut short
    with Image.open(bad) as img:
        assert img.size == (128, 96)
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "d2r", "--data", str(boxes), "--out", str(run), "--steps", "4",
                                   "--eval-fraction", "0", "--checkpoint-every", "1", "--workers", "2", *TINY])
    assert res.exit_code == 1, res.output
    lines = [line for line in res.stderr.splitlines() if "im4" in line]
    assert len(lines) == 1 and lines[0].startswith(f"skipped {bad}: ") and "truncated" in lines[0], res.stderr
    assert "data: 8 images, 8 boxes" in res.stderr and "1 files skipped" in res.stderr
    card = json.loads((run / "model_card.json").read_text())
    assert [p for p, _ in card["skipped_files"]] == [str(bad)] and card["steps"] == 4  # one epoch
    assert str(bad) in torch.load(run / "checkpoints" / "step-0000004.pt", weights_only=True)["skipped"]

    # the same run cut after step 1 and resumed: the same weights; the card still lists the file
    spec, whole = get("d2r"), settings(boxes, 4, eval_every=0)
    whole.eval_fraction = 0.0
    a = weights(train_method(spec, whole, tmp_path / "whole")[0])
    cut = dataclasses.replace(whole, train={**whole.train, "steps": 1})
    train_method(spec, cut, tmp_path / "cut")
    noted: list[str] = []
    path, problems = train_method(spec, RunSettings.load(tmp_path / "cut"), tmp_path / "cut", resume=True, steps=4,
                                  say=noted.append)
    b = weights(path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [p for p, _ in problems] == [str(bad)]
    assert json.loads((tmp_path / "cut" / "model_card.json").read_text())["skipped_files"][0][0] == str(bad)
    first = torch.load(tmp_path / "cut" / "checkpoints" / "step-0000001.pt", weights_only=True)["skipped"]
    assert len([n for n in noted if "im4" in n]) == (0 if str(bad) in first else 1)  # never reported twice
