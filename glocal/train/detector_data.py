"""Training data for the landmark detector (Detect-to-Retrieve, Teichmann et al., CVPR 2019, section 3 "Google
Landmark Boxes" and appendix B); its training loop is :mod:`glocal.train.detector_loop`.

Box files (one box per row; several rows with the same id give several boxes of one image):

``pixels`` CSV: header ``id,x1,y1,x2,y2``
    x1, y1, x2, y2 in pixels of the original image (x to the right, y down, corners included).
``gld`` CSV: header ``id,box`` -- the Google Landmark Boxes release (``boxes_split1.csv``,
``boxes_split2.csv``)
    ``box`` is four numbers "ymin xmin ymax xmax" (spaces or commas), normalised to [0, 1] by the image
    height and width (top, left, bottom, right).
``gld`` CSV with separate columns: header ``id,ymin,xmin,ymax,xmax``
    the same normalised values, one per column.
JSON
    ``{"layout": "pixels" | "gld", "boxes": [{"id": "...", "box": [4 numbers]}, ...]}`` (numbers in the
    layout's order) or a bare list of such records, read as ``pixels``.

Boxes are kept as x1, y1, x2, y2 with a flag saying whether they are normalised; the dataset turns them
into pixels once an image's size is known. A bad row or record is a :class:`~glocal.errors.BadInputError` of one
line naming the file and the line (CSV) or record (JSON).
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from torch import Tensor

from glocal.errors import BadInputError

LAYOUTS = ("pixels", "gld")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class BoxAnnotation:
    """The boxes of one training image.

    :param image_id: image identifier (GLD: 16 hex characters).
    :param boxes: (K, 4) float32 x1, y1, x2, y2 (pixels, or [0, 1] when ``normalized``).
    :param normalized: whether ``boxes`` are fractions of the image width / height.
    """

    image_id: str
    boxes: npt.NDArray[np.float32]
    normalized: bool

    def pixel_boxes(self, width: int, height: int) -> npt.NDArray[np.float32]:
        """The boxes in pixels of a ``width`` x ``height`` image."""
        if not self.normalized:
            return self.boxes.copy()
        return (self.boxes * np.array([width, height, width, height], np.float32)).astype(np.float32)


def _to_xyxy(values: Sequence[float], layout: str, where: str) -> list[float]:
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise BadInputError(f"{where}: expected 4 finite box numbers, found {list(values)}")
    if layout == "gld":
        ymin, xmin, ymax, xmax = values
        if min(values) < -1e-3 or max(values) > 1 + 1e-3:
            raise BadInputError(f"{where}: gld boxes are normalised to [0, 1], found {list(values)}")
        x1, y1, x2, y2 = xmin, ymin, xmax, ymax
    else:
        x1, y1, x2, y2 = values
    if x2 <= x1 or y2 <= y1:
        raise BadInputError(f"{where}: empty or inverted box (x1, y1, x2, y2) = {(x1, y1, x2, y2)}")
    return [x1, y1, x2, y2]


def _group(rows: list[tuple[str, list[float]]], normalized: bool) -> list[BoxAnnotation]:
    boxes: dict[str, list[list[float]]] = {}
    for image_id, box in rows:
        boxes.setdefault(image_id, []).append(box)
    return [BoxAnnotation(k, np.asarray(v, np.float32).reshape(-1, 4), normalized) for k, v in boxes.items()]


def _numbers(text: str, where: str) -> list[float]:
    try:
        return [float(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise BadInputError(f"{where}: box {text!r} is not numeric") from None


def read_box_csv(path: str | Path) -> list[BoxAnnotation]:
    """Boxes of a CSV in the ``pixels`` (``id,x1,y1,x2,y2``) or ``gld`` (``id,box`` or
    ``id,ymin,xmin,ymax,xmax``) layout, chosen from the header (see the module docstring).

    :raises BadInputError: one line naming the file (and the line) for an unreadable file, an unknown header,
        a row with a missing id, missing or non-numeric numbers, or an empty, inverted or out-of-range box.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return _read_box_rows(path, csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BadInputError(f"{path}: unreadable box file ({exc})") from None


def _read_box_rows(path: Path, reader: csv.DictReader) -> list[BoxAnnotation]:
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    if header[:1] != ["id"]:
        raise BadInputError(f"{path}: the first column must be 'id', found header {header}")
    cols = set(header)
    if {"x1", "y1", "x2", "y2"} <= cols:
        layout, keys = "pixels", ("x1", "y1", "x2", "y2")
    elif {"ymin", "xmin", "ymax", "xmax"} <= cols:
        layout, keys = "gld", ("ymin", "xmin", "ymax", "xmax")
    elif "box" in cols:
        layout, keys = "gld", ("box",)
    else:
        raise BadInputError(f"{path}: unknown box layout, header {header}; expected id,x1,y1,x2,y2 (pixels), "
                            "id,box or id,ymin,xmin,ymax,xmax (normalised GLD)")
    rows = []
    for row in reader:
        where = f"{path} line {reader.line_num}"
        image_id = (row["id"] or "").strip()
        if not image_id:
            raise BadInputError(f"{where}: empty image id")
        values = _numbers(" ".join(row[k] or "" for k in keys), where)
        rows.append((image_id, _to_xyxy(values, layout, where)))
    return _group(rows, normalized=layout == "gld")


def read_box_json(path: str | Path) -> list[BoxAnnotation]:
    """Boxes of a JSON file (see the module docstring); errors as :func:`read_box_csv` (naming the record)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path}: unreadable box file ({exc})") from None
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{path}: not valid JSON ({exc})") from None
    layout, records = "pixels", data
    if isinstance(data, dict):
        layout, records = data.get("layout", "pixels"), data.get("boxes")
    if layout not in LAYOUTS:
        raise BadInputError(f"{path}: unknown layout {layout!r}; expected one of {LAYOUTS}")
    if not isinstance(records, list):
        raise BadInputError(f"{path}: expected a list of {{'id', 'box'}} records")
    rows = []
    for i, rec in enumerate(records):
        where = f"{path} record {i}"
        if not isinstance(rec, dict) or "id" not in rec or "box" not in rec or not isinstance(rec["box"], list):
            raise BadInputError(f"{where}: expected {{'id': ..., 'box': [4 numbers]}}, found {rec!r}")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in rec["box"]):
            raise BadInputError(f"{where}: box {rec['box']!r} is not numeric")
        rows.append((str(rec["id"]), _to_xyxy([float(v) for v in rec["box"]], layout, where)))
    return _group(rows, normalized=layout == "gld")


def read_boxes(path: str | Path) -> list[BoxAnnotation]:
    """Boxes of a ``.csv`` or ``.json`` file."""
    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        return read_box_json(path)
    if suffix == ".csv":
        return read_box_csv(path)
    raise BadInputError(f"{path}: box files are .csv or .json, found {suffix!r}")


def find_image(root: str | Path, image_id: str) -> Path | None:
    """The file of ``image_id`` under ``root``: ``root/<id>`` with or without an image suffix, or the GLD tree
    ``root/a/b/c/<abc...>`` likewise; None when there is none."""
    root = Path(root)
    for base in (root / image_id, root / image_id[:1] / image_id[1:2] / image_id[2:3] / image_id):
        for suffix in ("", *IMAGE_SUFFIXES):
            p = base.with_name(base.name + suffix)
            if p.is_file():
                return p
    return None


def folder_loader(root: str | Path) -> Callable[[str], npt.NDArray[np.uint8]]:
    """Image loader for ``root/<id>.jpg`` or the GLD tree ``root/a/b/c/<abc...>.jpg`` (RGB uint8)."""
    root = Path(root)

    def load(image_id: str) -> npt.NDArray[np.uint8]:
        p = find_image(root, image_id)
        if p is None:
            raise FileNotFoundError(f"detector_data.py: no image for id {image_id!r} under {root} "
                                    f"(tried {root / image_id}.jpg, ...)")
        with Image.open(p) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)

    return load


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation: resize so the longer side is drawn from [min_side, max_side], then flip.

    :param min_side: smallest longer side after resizing (pixels).
    :param max_side: largest longer side after resizing (pixels).
    :param flip_prob: probability of a horizontal flip (boxes flipped with the image).
    """

    min_side: int = 320
    max_side: int = 640
    flip_prob: float = 0.5


def resize_with_boxes(pixels: npt.NDArray[np.uint8], boxes: npt.NDArray, longer_side: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
    """Resize so the longer side is ``longer_side`` and scale the pixel boxes by the same factors."""
    h, w = pixels.shape[:2]
    s = longer_side / max(h, w)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    out = np.asarray(Image.fromarray(pixels).resize((nw, nh), Image.Resampling.BILINEAR), dtype=np.uint8)
    b = np.asarray(boxes, np.float32).reshape(-1, 4) * np.array([nw / w, nh / h, nw / w, nh / h], np.float32)
    return out, b.astype(np.float32)


def hflip_with_boxes(pixels: npt.NDArray[np.uint8], boxes: npt.NDArray) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
    """Mirror the image left-right; a box x1, x2 becomes W - x2, W - x1."""
    w = pixels.shape[1]
    b = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    b[:, [0, 2]] = w - b[:, [2, 0]]
    return np.ascontiguousarray(pixels[:, ::-1]), b


def synthetic_box_images(n: int, seed: int = 0) -> tuple[dict[str, npt.NDArray[np.uint8]], list[BoxAnnotation]]:
    """``n`` 96 x 128 images, each one bright rectangle (the "landmark") on dark noise, with its box: a
    seeded, learnable toy set for smoke-training a detector (tests, ``benchmarks/train_synthetic.py``)."""
    rng = np.random.default_rng(seed)
    images: dict[str, npt.NDArray[np.uint8]] = {}
    boxes: list[BoxAnnotation] = []
    for i in range(n):
        pixels = rng.integers(0, 80, (96, 128, 3), dtype=np.uint8)
        x1, y1 = int(rng.integers(5, 50)), int(rng.integers(5, 40))
        x2, y2 = x1 + int(rng.integers(30, 70)), y1 + int(rng.integers(30, 50))
        pixels[y1:y2, x1:x2] = 230
        images[f"im{i}"] = pixels
        boxes.append(BoxAnnotation(f"im{i}", np.array([[x1, y1, x2, y2]], np.float32), normalized=False))
    return images, boxes


class DetectorBoxDataset(torch.utils.data.Dataset):
    """(image (3, H, W) float in [0, 1], target {"boxes": (K, 4), "labels": (K,) ones}), the training input
    of :class:`glocal.models.detector.LandmarkDetector` (boxes in the image's pixels).

    Augmentation is drawn from ``numpy.random.default_rng([seed, epoch, index])``: the same seed and epoch
    (:meth:`set_epoch`) give the same samples. ``dataset[i]`` is None for an image :meth:`sample` cannot read
    (:class:`glocal.train.detector_images.StreamedBoxDataset`; the loop leaves it out of its batch).
    """

    def __init__(self, annotations: Sequence[BoxAnnotation], load_image: Callable[[str], npt.NDArray[np.uint8]],
                 augment: AugmentConfig | None = AugmentConfig(), seed: int = 0) -> None:
        if not annotations:
            raise ValueError("detector_data.py: a detector dataset needs at least one annotated image")
        self.annotations = list(annotations)
        self.load_image = load_image
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.annotations)

    def sample(self, index: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]] | None:
        """(pixels, boxes in those pixels) of image ``index`` before augmentation (None: it cannot be read)."""
        ann = self.annotations[index]
        pixels = np.asarray(self.load_image(ann.image_id), dtype=np.uint8)
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError(f"detector_data.py: image {ann.image_id!r} must be (H, W, 3) RGB, got {pixels.shape}")
        h, w = pixels.shape[:2]
        return pixels, ann.pixel_boxes(w, h)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]] | None:
        got = self.sample(index)
        if got is None:
            return None
        pixels, boxes = got
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            side = int(rng.integers(self.augment.min_side, self.augment.max_side + 1))
            pixels, boxes = resize_with_boxes(pixels, boxes, side)
            if rng.random() < self.augment.flip_prob:
                pixels, boxes = hflip_with_boxes(pixels, boxes)
        h, w = pixels.shape[:2]
        boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
        boxes = boxes[(boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)]
        image = torch.from_numpy(np.array(pixels, dtype=np.uint8, order="C")).permute(2, 0, 1).float().div_(255.0)
        target = {"boxes": torch.from_numpy(boxes).reshape(-1, 4),
                  "labels": torch.ones(len(boxes), dtype=torch.int64)}
        return image, target


def collate_detection(batch: Sequence[tuple[Tensor, dict[str, Tensor]]]) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Keep images of different sizes as a list (the detector pads them into one batch itself)."""
    return [b[0] for b in batch], [b[1] for b in batch]


def train_detector(model: torch.nn.Module, dataset: DetectorBoxDataset, steps: int, lr: float = 1e-3, seed: int = 0,
                   batch_size: int = 4, optimizer: str = "adamw", weight_decay: float = 1e-4,
                   max_grad_norm: float | None = 10.0,
                   log: Callable[[int, float], None] | None = None) -> list[float]:
    """Train ``model`` (a :class:`glocal.models.detector.LandmarkDetector`, or any module whose training-mode
    ``forward(images, targets)`` returns a dict of loss terms) for ``steps`` optimiser steps on ``dataset``;
    returns the total loss of every step; the model is left in eval mode.

    The loop of ``glocal train d2r`` (:func:`glocal.train.detector_loop.fit_detector`, where the loss and the
    order are described) without a run folder: no checkpoint, log or evaluation.

    :param optimizer: ``adamw`` or ``sgd`` (momentum 0.9).
    """
    from glocal.train.detector_loop import DetectorTrainConfig, fit_detector

    if steps < 1:
        raise ValueError(f"detector_data.py: steps must be >= 1, got {steps}")
    config = DetectorTrainConfig(steps=steps, batch=batch_size, lr=lr, optimizer=optimizer, seed=seed,
                                 weight_decay=weight_decay, clip_norm=max_grad_norm or 0.0,
                                 device=str(next(model.parameters()).device))

    def on_log(row: dict[str, float]) -> None:
        if log is not None:
            log(int(row["step"]), row["loss"])

    return fit_detector(model, dataset, config, on_log=on_log).losses
