"""Landmark detector of Detect-to-Retrieve (Teichmann et al., CVPR 2019, section 4 and appendix B).

The paper trains an SSD-MobileNetV2 and a Faster R-CNN ResNet-50 on the Google Landmark Boxes (one class,
"landmark") and keeps the boxes scoring above 0.1 (about 4 per image) as the regions of a database image;
the full image is always region 1 and is added by the index, not here. We build the two closest models
of torchvision with two classes (background + landmark) and *no* pretrained weights:

``ssdlite320_mobilenet_v3_large`` (alias ``ssdlite``)
    SSDlite with a MobileNetV3-Large backbone; every image is resized to ``input_size`` x ``input_size``
    (320 by default) inside the model, aspect ratio not kept.
``fasterrcnn_resnet50_fpn`` (alias ``faster-rcnn``)
    Faster R-CNN ResNet-50 FPN; the model resizes the shorter side to ``input_size`` (800 by default)
    with the longer side at most ``input_size * 5 / 3`` (1333 by default).

Both models map their boxes back to the frame of the tensor they were given (the resized
:class:`~glocal.io.images.LoadedImage` pixels); :meth:`LandmarkDetector.detect` then undoes our own
resize and crop: original = pixel / scale + offset.

Checkpoints are ``{"format": "glocal/detector/1", "config": {...}, "state_dict": {...}}`` (written by
:func:`save_detector`); a bare torchvision state dict (names without the ``net.`` prefix) is accepted
too. Files are read with ``torch.load(..., weights_only=True)`` only.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from glocal.io.images import LoadedImage
from glocal.models.checkpoints import CheckpointError, CheckpointMismatchError, read_tensors

ARCHS = ("ssdlite320_mobilenet_v3_large", "fasterrcnn_resnet50_fpn")
ARCH_ALIASES = {"ssdlite": ARCHS[0], "ssd": ARCHS[0], "faster-rcnn": ARCHS[1], "fasterrcnn": ARCHS[1]}
CHECKPOINT_FAMILY = "detector"
FORMAT = f"glocal/{CHECKPOINT_FAMILY}/1"
NUM_CLASSES = 2  # background + landmark


def canonical_arch(arch: str) -> str:
    """The torchvision builder name of ``arch`` (accepts the short aliases)."""
    name = ARCH_ALIASES.get(arch, arch)
    if name not in ARCHS:
        raise ValueError(f"detector.py: unknown detector arch {arch!r}; available: "
                         f"{', '.join(ARCHS)} (aliases {', '.join(ARCH_ALIASES)})")
    return name


@dataclass(frozen=True)
class DetectorConfig:
    """Configuration of :class:`LandmarkDetector`.

    :param arch: ``ssdlite320_mobilenet_v3_large`` or ``fasterrcnn_resnet50_fpn`` (or an alias).
    :param checkpoint: weights file; ``None`` keeps the random initialisation and warns loudly.
    :param score_threshold: keep boxes scoring above this (D2R uses 0.1, about 4 boxes per image).
    :param max_boxes: keep at most this many boxes, best first.
    :param min_box_size: drop boxes whose width or height is below this, in original-image pixels.
    :param device: torch device string.
    :param input_size: side the model resizes to (SSDlite: square side, default 320; Faster R-CNN:
        shorter side, default 800, longer side capped at 5/3 of it). ``None`` keeps the default.
    """

    arch: str = "ssdlite320_mobilenet_v3_large"
    checkpoint: str | None = None
    score_threshold: float = 0.1
    max_boxes: int = 10
    min_box_size: float = 16.0
    device: str = "cpu"
    input_size: int | None = None

    def __post_init__(self) -> None:
        canonical_arch(self.arch)
        if not 0.0 <= self.score_threshold < 1.0:
            raise ValueError(f"detector.py: score_threshold must be in [0, 1), got {self.score_threshold}")
        if self.max_boxes < 1:
            raise ValueError(f"detector.py: max_boxes must be >= 1, got {self.max_boxes}")
        if self.input_size is not None and self.input_size < 32:
            raise ValueError(f"detector.py: input_size must be >= 32 pixels, got {self.input_size}")


class Detections(NamedTuple):
    """Boxes of one image: ``boxes`` (R, 4) float32 x1, y1, x2, y2 and ``scores`` (R,) float32, best first."""

    boxes: npt.NDArray[np.float32]
    scores: npt.NDArray[np.float32]


def build_detection_net(arch: str, input_size: int | None = None) -> nn.Module:
    """A torchvision detection model with two classes and random weights (no download ever)."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn, ssdlite320_mobilenet_v3_large

    name = canonical_arch(arch)
    if name == ARCHS[0]:
        net = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
        if input_size is not None:  # the anchors follow the feature map sizes, so any square side works
            net.transform.fixed_size = (input_size, input_size)
            net.transform.min_size = (input_size,)
            net.transform.max_size = input_size
        return net
    net = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
    if input_size is not None:
        net.transform.min_size = (input_size,)
        net.transform.max_size = max(input_size, round(input_size * 5 / 3))
    return net


def _set_inference_limits(net: nn.Module, score_threshold: float) -> None:
    """Let the model drop low scores itself (cheaper NMS); we filter again afterwards."""
    if hasattr(net, "roi_heads"):  # Faster R-CNN
        net.roi_heads.score_thresh = score_threshold
    elif hasattr(net, "score_thresh"):  # SSD
        net.score_thresh = score_threshold


def pixels_to_tensor(pixels: npt.NDArray[np.uint8]) -> Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 in [0, 1], the input of the torchvision detectors."""
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"detector.py: expected (H, W, 3) RGB pixels, got shape {pixels.shape}")
    return torch.from_numpy(np.array(pixels, dtype=np.uint8, order="C")).permute(2, 0, 1).float().div_(255.0)


def to_original_frame(boxes: npt.NDArray, image: LoadedImage) -> npt.NDArray[np.float32]:
    """Boxes in the loaded pixels' frame -> original-image pixels (x / scale + offset), clipped to the image."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4) / np.float32(image.scale)
    ox, oy = image.offset
    b += np.array([ox, oy, ox, oy], np.float32)
    h, w = image.original_size
    np.clip(b[:, 0::2], 0.0, float(w), out=b[:, 0::2])
    np.clip(b[:, 1::2], 0.0, float(h), out=b[:, 1::2])
    return b


class LandmarkDetector(nn.Module):
    """Landmark boxes of an image (D2R section 4; thresholded at ``config.score_threshold``)."""

    checkpoint_family = CHECKPOINT_FAMILY

    def __init__(self, config: DetectorConfig | None = None) -> None:
        super().__init__()
        self.config = config or DetectorConfig()
        self.config = replace(self.config, arch=canonical_arch(self.config.arch))
        self.net = build_detection_net(self.config.arch, self.config.input_size)
        if self.config.checkpoint is not None:
            load_detector_weights(self, self.config.checkpoint)
        else:
            warnings.warn(
                f"detector.py: LandmarkDetector({self.config.arch}) has NO checkpoint and RANDOM weights: its "
                "boxes are meaningless. Train one (glocal.train.detector_data.train_detector) and pass "
                "DetectorConfig(checkpoint=...).", UserWarning, stacklevel=2)
        self.to(self.config.device)
        self.eval()

    @classmethod
    def from_checkpoint(cls, path: str | Path, **overrides: Any) -> LandmarkDetector:
        """Rebuild the detector stored in ``path`` (arch and settings from the file, then ``overrides``)."""
        _, meta = read_tensors(path)
        stored = meta.get("config", {}) if isinstance(meta.get("config"), dict) else {}
        known = {f.name for f in fields(DetectorConfig)}
        conf = {k: v for k, v in stored.items() if k in known}
        conf.update(overrides)
        conf["checkpoint"] = str(path)
        return cls(DetectorConfig(**conf))

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> Any:
        """The torchvision model: a loss dict in training mode (``targets`` required), detections otherwise."""
        if self.training and targets is None:
            raise ValueError("detector.py: LandmarkDetector in training mode needs targets (boxes and labels)")
        return self.net(images, targets)

    @torch.inference_mode()
    def detect_pixels(self, pixels: npt.NDArray[np.uint8]) -> Detections:
        """Raw detections in the frame of ``pixels`` (above the score threshold, best first, uncapped)."""
        was_training = self.training
        self.eval()
        _set_inference_limits(self.net, self.config.score_threshold)
        x = pixels_to_tensor(pixels).to(self.config.device)
        out = self.net([x])[0]
        self.train(was_training)
        boxes = out["boxes"].detach().float().cpu().numpy().reshape(-1, 4)
        scores = out["scores"].detach().float().cpu().numpy().reshape(-1)
        keep = scores > self.config.score_threshold
        order = np.argsort(-scores[keep], kind="stable")
        return Detections(boxes[keep][order].astype(np.float32), scores[keep][order].astype(np.float32))

    def detect(self, image: LoadedImage) -> Detections:
        """Landmark boxes of ``image`` in ORIGINAL-image pixels (resize and crop undone), best first.

        Boxes scoring at most ``score_threshold`` or narrower / shorter than ``min_box_size`` (original
        pixels) are dropped; at most ``max_boxes`` remain. The full image is not added.
        """
        raw = self.detect_pixels(image.pixels)
        boxes = to_original_frame(raw.boxes, image)
        wh = boxes[:, 2:] - boxes[:, :2]
        keep = np.all(wh >= self.config.min_box_size, axis=1)
        boxes, scores = boxes[keep][: self.config.max_boxes], raw.scores[keep][: self.config.max_boxes]
        return Detections(np.ascontiguousarray(boxes, np.float32), np.ascontiguousarray(scores, np.float32))


def save_detector(detector: LandmarkDetector, path: str | Path) -> None:
    """Write ``detector`` as ``{"format": "glocal/detector/1", "config", "state_dict"}`` (CPU tensors)."""
    config = asdict(replace(detector.config, checkpoint=None))
    state = {k: v.detach().cpu() for k, v in detector.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "config": config, "state_dict": state}, Path(path))


def load_detector_weights(detector: LandmarkDetector, path: str | Path) -> int:
    """Load ``path`` into ``detector`` in place; returns the number of tensors loaded.

    :raises CheckpointMismatchError: missing / unexpected / mis-shaped parameters, naming the file
        (for example a Faster R-CNN file given to an SSDlite detector).
    :raises CheckpointError: unreadable file, or a checkpoint of another model family.
    """
    tensors, meta = read_tensors(path)
    fmt = str(meta.get("format", ""))
    if fmt and not fmt.startswith(f"glocal/{CHECKPOINT_FAMILY}/"):
        raise CheckpointError(f"{path}: a {fmt!r} checkpoint cannot be loaded into a landmark detector")
    if not any(k.startswith("net.") for k in tensors):  # a bare torchvision state dict
        tensors = {f"net.{k}": v for k, v in tensors.items()}
    own = detector.state_dict()
    optional = {k for k in own if k.endswith("num_batches_tracked")}
    missing = sorted(set(own) - set(tensors) - optional)
    unexpected = sorted(k for k in tensors if k not in own)
    misshaped = sorted(f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                       for k, v in tensors.items() if k in own and tuple(v.shape) != tuple(own[k].shape))
    if missing or unexpected or misshaped:
        stored_arch = meta.get("config", {}).get("arch") if isinstance(meta.get("config"), dict) else None
        hint = (f"the file holds a {stored_arch} but the detector is a {detector.config.arch}"
                if stored_arch and stored_arch != detector.config.arch else "")
        raise CheckpointMismatchError(path, "glocal", missing, unexpected, misshaped, hint)
    detector.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items() if k in own}, strict=False)
    return len(tensors)
