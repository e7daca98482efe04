"""Landmark detector (D2R section 4): coordinate frames, checkpoints, box files, training."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from glocal.io.images import LoadedImage
from glocal.models.checkpoints import CheckpointError, CheckpointMismatchError
from glocal.models.detector import (
    DetectorConfig,
    LandmarkDetector,
    canonical_arch,
    load_detector_weights,
    save_detector,
    to_original_frame,
)
from glocal.train.detector_data import (
    AugmentConfig,
    DetectorBoxDataset,
    collate_detection,
    hflip_with_boxes,
    read_boxes,
    resize_with_boxes,
    synthetic_box_images,
    train_detector,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def make_detector(**conf) -> LandmarkDetector:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return LandmarkDetector(DetectorConfig(**{"input_size": 96, **conf}))


class FixedNet(nn.Module):
    """Stands in for the torchvision model: returns given boxes (in the input tensor's frame)."""

    def __init__(self, boxes: list[list[float]], scores: list[float]) -> None:
        super().__init__()
        self.boxes, self.scores = torch.tensor(boxes), torch.tensor(scores)
        self.seen: list[tuple[int, ...]] = []

    def forward(self, images, targets=None):
        self.seen.append(tuple(images[0].shape))
        return [{"boxes": self.boxes, "scores": self.scores, "labels": torch.ones(len(self.scores), dtype=torch.int64)}]


def test_random_init_warns_loudly():
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        LandmarkDetector(DetectorConfig(input_size=64))


def test_unknown_arch_is_refused():
    with pytest.raises(ValueError, match="unknown detector arch"):
        DetectorConfig(arch="yolo")
    assert canonical_arch("faster-rcnn") == "fasterrcnn_resnet50_fpn"


def test_forced_box_maps_back_to_original_pixels():
    det = make_detector(score_threshold=0.1, min_box_size=16, max_boxes=2)
    # an 800x1000 (W x H) original, cropped at (100, 50) and shown at scale 0.25: pixels are 40 x 60
    image = LoadedImage(np.zeros((40, 60, 3), np.uint8), original_size=(1000, 800), scale=0.25, offset=(100.0, 50.0))
    det.net = FixedNet(
        boxes=[[10, 20, 50, 30], [10, 20, 50, 60], [0, 0, 2, 2], [1, 1, 30, 30], [5, 5, 40, 40]],
        scores=[0.6, 0.9, 0.95, 0.05, 0.3],
    )
    boxes, scores = det.detect(image)
    assert det.net.seen == [(3, 40, 60)]  # the loaded pixels are what the model sees
    # best first; the 8x8 box (too small in original pixels) and the 0.05 score are dropped; max 2 kept
    np.testing.assert_allclose(scores, [0.9, 0.6])
    np.testing.assert_allclose(boxes, [[140, 130, 300, 290], [140, 130, 300, 170]])
    assert boxes.dtype == np.float32 and boxes.shape == (2, 4)


def test_to_original_frame_clips_to_image():
    image = LoadedImage(np.zeros((10, 10, 3), np.uint8), original_size=(20, 30), scale=0.5)
    np.testing.assert_allclose(to_original_frame(np.array([[-1, 2, 20, 12]]), image), [[0, 4, 30, 20]])


def test_real_ssdlite_boxes_lie_in_the_original_crop():
    det = make_detector(score_threshold=0.0, min_box_size=1)
    rng = np.random.default_rng(0)
    image = LoadedImage(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), original_size=(400, 600),
                        scale=0.5, offset=(200.0, 100.0))
    boxes, scores = det.detect(image)
    assert 0 < len(boxes) <= det.config.max_boxes and boxes.shape[1] == 4
    assert np.all(np.diff(scores) <= 0)
    x1, y1, x2, y2 = 200, 100, 200 + 64 / 0.5, 100 + 48 / 0.5
    assert boxes[:, 0].min() >= x1 - 1e-3 and boxes[:, 2].max() <= x2 + 1e-3
    assert boxes[:, 1].min() >= y1 - 1e-3 and boxes[:, 3].max() <= y2 + 1e-3
    raw = det.detect_pixels(image.pixels)  # same boxes, in the pixel frame, mapped by hand
    np.testing.assert_allclose(raw.boxes[: len(boxes)] / 0.5 + [200, 100, 200, 100], boxes, rtol=1e-5)


def test_faster_rcnn_forward_on_a_small_image():
    det = make_detector(arch="faster-rcnn", input_size=64, score_threshold=0.0, min_box_size=1)
    image = LoadedImage(np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8), (96, 128), 0.5)
    boxes, scores = det.detect(image)
    assert boxes.dtype == np.float32 and scores.shape == (len(boxes),)
    if len(boxes):
        assert boxes.min() >= 0 and boxes[:, 2].max() <= 128 and boxes[:, 3].max() <= 96


def test_checkpoint_round_trip(tmp_path: Path):
    det = make_detector(score_threshold=0.0, min_box_size=1, max_boxes=5)
    path = tmp_path / "det.pt"
    save_detector(det, path)
    again = LandmarkDetector.from_checkpoint(path)
    assert again.config.input_size == 96 and again.config.max_boxes == 5
    for k, v in det.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    image = LoadedImage(np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8), (64, 64), 1.0)
    np.testing.assert_allclose(det.detect(image).boxes, again.detect(image).boxes)
    bare = tmp_path / "bare.pt"  # a torchvision state dict without our prefix loads too
    torch.save(det.net.state_dict(), bare)
    assert load_detector_weights(make_detector(), bare) == len(det.net.state_dict())


def test_checkpoint_misfit_lists_every_problem(tmp_path: Path):
    det = make_detector()
    state = det.state_dict()
    names = [k for k, v in state.items() if v.ndim > 1]
    state = dict(state)
    del state[names[0]]
    state[names[1]] = torch.zeros(3, 3)
    state["net.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pt"
    torch.save({"format": "glocal/detector/1", "config": {}, "state_dict": state}, path)
    with pytest.raises(CheckpointMismatchError) as info:
        load_detector_weights(det, path)
    msg = str(info.value)
    assert "broken.pt" in msg and names[0] in msg and names[1] in msg and "net.extra.weight" in msg
    assert "1 missing" in msg and "1 unexpected" in msg and "1 mis-shaped" in msg
    other = tmp_path / "delg.pt"
    torch.save({"format": "glocal/delg/1", "config": {}, "state_dict": {"w": torch.zeros(1)}}, other)
    with pytest.raises(CheckpointError, match="delg.pt"):
        load_detector_weights(det, other)


# -- box files ------------------------------------------------------------------------------------------
def test_read_pixel_csv_groups_boxes_per_image(tmp_path: Path):
    p = tmp_path / "boxes.csv"
    p.write_text("id,x1,y1,x2,y2\na,1,2,30,40\nb,0,0,10,10\na,5,5,9,9\n")
    anns = {a.image_id: a for a in read_boxes(p)}
    assert not anns["a"].normalized
    np.testing.assert_allclose(anns["a"].boxes, [[1, 2, 30, 40], [5, 5, 9, 9]])
    np.testing.assert_allclose(anns["b"].pixel_boxes(100, 50), [[0, 0, 10, 10]])


@pytest.mark.parametrize("text", [
    "id,box\n0123abcd,0.1 0.2 0.5 0.8\n",
    "id,ymin,xmin,ymax,xmax\n0123abcd,0.1,0.2,0.5,0.8\n",
])
def test_read_gld_normalised_layouts(tmp_path: Path, text: str):
    p = tmp_path / "boxes_split1.csv"
    p.write_text(text)
    (ann,) = read_boxes(p)
    assert ann.image_id == "0123abcd" and ann.normalized
    # ymin xmin ymax xmax = 0.1 0.2 0.5 0.8 -> x1 y1 x2 y2 in a 200 x 100 image
    np.testing.assert_allclose(ann.pixel_boxes(200, 100), [[40, 10, 160, 50]], rtol=1e-6)


def test_read_json_layouts_and_errors(tmp_path: Path):
    p = tmp_path / "b.json"
    p.write_text(json.dumps({"layout": "gld", "boxes": [{"id": "x", "box": [0, 0, 0.5, 1]}]}))
    (ann,) = read_boxes(p)
    np.testing.assert_allclose(ann.pixel_boxes(10, 20), [[0, 0, 10, 10]])
    p.write_text(json.dumps([{"id": "y", "box": [1, 2, 3, 4]}]))
    assert not read_boxes(p)[0].normalized
    p.write_text(json.dumps([{"id": "y", "box": [5, 2, 3, 4]}]))
    with pytest.raises(ValueError, match=r"b\.json record 0: empty or inverted"):
        read_boxes(p)
    bad = tmp_path / "bad.csv"
    bad.write_text("id,box\nz,0.1 0.2 1.5 0.8\n")
    with pytest.raises(ValueError, match=r"bad\.csv line 2: gld boxes are normalised"):
        read_boxes(bad)
    bad.write_text("name,a,b\n")
    with pytest.raises(ValueError, match="first column must be 'id'"):
        read_boxes(bad)


# -- augmentation and training ----------------------------------------------------------------------------
def test_resize_and_flip_move_the_boxes_with_the_pixels():
    px = np.zeros((40, 80, 3), np.uint8)
    px[10:20, 5:25] = 255
    box = np.array([[5, 10, 25, 20]], np.float32)
    small, b = resize_with_boxes(px, box, 40)
    np.testing.assert_allclose(b, [[2.5, 5, 12.5, 10]])
    assert small.shape == (20, 40, 3)
    flipped, fb = hflip_with_boxes(px, box)
    np.testing.assert_allclose(fb, [[55, 10, 75, 20]])
    ys, xs = np.nonzero(flipped[..., 0])
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (55, 75, 10, 20)


def test_dataset_is_reproducible_and_collates():
    images, anns = synthetic_box_images(3)
    ds = DetectorBoxDataset(anns, images.__getitem__, AugmentConfig(64, 128, 0.5), seed=3)
    a, b = ds[1], ds[1]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    ims, targets = collate_detection([ds[0], ds[2]])
    assert len(ims) == 2 and targets[0]["labels"].tolist() == [1]
    for im, t in zip(ims, targets):
        _, h, w = im.shape
        assert max(h, w) >= 64 and t["boxes"][:, 2].max() <= w and t["boxes"][:, 3].max() <= h


def test_training_lowers_the_loss():
    images, anns = synthetic_box_images(4)
    ds = DetectorBoxDataset(anns, images.__getitem__, AugmentConfig(96, 128, 0.5), seed=0)
    det = make_detector(input_size=128)
    losses = train_detector(det, ds, steps=12, lr=1e-3, seed=0, batch_size=2)
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])
    assert not det.training
