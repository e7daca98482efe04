"""Region sources for regional indexing (Detect-to-Retrieve, Teichmann et al., CVPR 2019, section 4).

A database image's regions feed regional search (D2R eq. 3-4) and R-ASMK (eq. 8-9) in
:mod:`glocal.index.regional`. The full image is always region 1 there and is added by the index, so
:attr:`ImageFeatures.regions` holds only the *extra* boxes, in original-image pixels. Sources:

``detector``
    boxes of a trained landmark detector (:class:`glocal.models.detector.LandmarkDetector`, threshold 0.1,
    about 4 boxes per image in the paper).
``rmac``
    the fixed multi-scale grid of R-MAC (Tolias, Sicre and Jegou, ICLR 2016, section 3 "region
    sampling"): the paper's appendix C compares it with the detector.
``none``
    no regions: features pass through unchanged.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from glocal.io.images import LoadedImage
from glocal.records import ImageFeatures

if TYPE_CHECKING:  # torch is imported only by the detector source
    from glocal.models.detector import DetectorConfig, LandmarkDetector

REGION_SOURCES = ("detector", "rmac", "none")
RegionSource = Callable[[LoadedImage, ImageFeatures], ImageFeatures]

#: R-MAC: target overlap of consecutive level-1 regions along the longer side, and the candidate counts.
RMAC_OVERLAP = 0.4
RMAC_STEPS = (2, 3, 4, 5, 6, 7)


def rmac_extra_steps(width: float, height: float) -> int:
    """Extra regions along the longer side of the R-MAC grid (0 for a square image).

    Among 2..7 level-1 regions of side min(W, H) spread over the longer side, pick the count whose
    consecutive overlap 1 - b / min(W, H) (b: spacing) is closest to 40 %; return count - 1.
    """
    short, long_ = min(width, height), max(width, height)
    if short <= 0:
        raise ValueError(f"regions.py: image size must be positive, got {width}x{height}")
    if long_ == short:
        return 0
    overlaps = np.array([1.0 - (long_ - short) / (s - 1) / short for s in RMAC_STEPS])
    return int(np.argmin(np.abs(overlaps - RMAC_OVERLAP))) + 1


def rmac_boxes(width: float, height: float, levels: Sequence[int] = (1, 2, 3)) -> npt.NDArray[np.float32]:
    """The R-MAC region grid (Tolias et al., ICLR 2016, section 3) as (R, 4) x1, y1, x2, y2 boxes.

    At level l the regions are squares of side 2 min(W, H) / (l + 1); there are l of them along the
    shorter side and l + e along the longer side (e from :func:`rmac_extra_steps`, chosen so that
    level-1 regions overlap by about 40 %), spaced uniformly from one border to the other. A square
    image gives 1, 4, 9 regions at levels 1, 2, 3; a 4:3 image 2, 6, 12; a 2:1 image 3, 8, 15.
    Level 1 of a square image is the full image itself (:func:`add_regions` drops it).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"regions.py: image size must be positive, got {width}x{height}")
    extra = rmac_extra_steps(width, height)
    extra_w, extra_h = (extra, 0) if width > height else (0, extra)
    out = []
    for level in levels:
        if level < 1:
            raise ValueError(f"regions.py: R-MAC levels start at 1, got {level}")
        side = 2.0 * min(width, height) / (level + 1)
        xs = _spread(width, side, level + extra_w)
        ys = _spread(height, side, level + extra_h)
        gx, gy = np.meshgrid(xs, ys, indexing="xy")
        x1, y1 = gx.ravel(), gy.ravel()
        out.append(np.stack([x1, y1, x1 + side, y1 + side], axis=1))
    if not out:
        return np.zeros((0, 4), np.float32)
    boxes = np.concatenate(out).astype(np.float32)
    np.clip(boxes[:, 0::2], 0.0, float(width), out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0.0, float(height), out=boxes[:, 1::2])
    return boxes


def _spread(extent: float, side: float, count: int) -> npt.NDArray[np.float64]:
    """Left / top corners of ``count`` windows of ``side`` spread evenly from 0 to ``extent - side``."""
    if count <= 1:
        return np.array([max(0.0, (extent - side) / 2.0)])
    return np.linspace(0.0, max(0.0, extent - side), count)


@dataclass(frozen=True)
class RegionFilter:
    """How :func:`add_regions` cleans boxes.

    :param min_side: drop boxes narrower or shorter than this many original pixels (after clipping).
    :param full_image_iou: drop boxes whose IoU with the full image is at least this (region 1 already is
        the full image).
    :param max_regions: keep at most this many boxes (in the given order); ``None``: all.
    """

    min_side: float = 16.0
    full_image_iou: float = 0.95
    max_regions: int | None = None


def clean_boxes(boxes: npt.NDArray, image_size: tuple[int, int], filt: RegionFilter | None = None) -> npt.NDArray[np.float32]:
    """Clip (R, 4) x1, y1, x2, y2 boxes to an image of (height, width), then drop non-finite, tiny,
    full-image and duplicate boxes, keeping the input order."""
    filt = filt or RegionFilter()
    b = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    h, w = float(image_size[0]), float(image_size[1])
    b = b[np.all(np.isfinite(b), axis=1)]
    np.clip(b[:, 0::2], 0.0, w, out=b[:, 0::2])
    np.clip(b[:, 1::2], 0.0, h, out=b[:, 1::2])
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    keep = (bw >= max(filt.min_side, 1e-6)) & (bh >= max(filt.min_side, 1e-6))
    iou_full = (bw * bh) / max(w * h, 1e-12)  # a clipped box lies inside the image: IoU = area ratio
    keep &= iou_full < filt.full_image_iou
    b = b[keep]
    if len(b):
        _, first = np.unique(np.round(b, 2), axis=0, return_index=True)
        b = b[np.sort(first)]
    if filt.max_regions is not None:
        b = b[: filt.max_regions]
    return np.ascontiguousarray(b, np.float32)


def add_regions(features: ImageFeatures, boxes: npt.NDArray, filt: RegionFilter | None = None) -> ImageFeatures:
    """A copy of ``features`` whose ``regions`` are ``boxes`` (original pixels) cleaned by :func:`clean_boxes`.

    The full image is never stored (the index always adds it as region 1, D2R section 4.2); an image with
    no usable box gets an empty (0, 4) array.
    """
    return replace(features, regions=clean_boxes(boxes, features.image_size, filt))


def loaded_extent(image: LoadedImage) -> tuple[float, float, float, float]:
    """x1, y1, x2, y2 of the part of the original image that ``image.pixels`` show (a crop or all of it)."""
    h, w = image.original_size
    ph, pw = image.pixels.shape[:2]
    ox, oy = image.offset
    x2, y2 = ox + pw / image.scale, oy + ph / image.scale
    slack = 1.0 / image.scale + 1.0  # rounding of the resized size
    if abs(x2 - w) <= slack:
        x2 = float(w)
    if abs(y2 - h) <= slack:
        y2 = float(h)
    return float(ox), float(oy), min(float(w), x2), min(float(h), y2)


def rmac_source(levels: Sequence[int] = (1, 2, 3), filt: RegionFilter | None = None) -> RegionSource:
    """Region source laying the R-MAC grid over the loaded part of each image."""
    levels = tuple(levels)

    def source(image: LoadedImage, features: ImageFeatures) -> ImageFeatures:
        x1, y1, x2, y2 = loaded_extent(image)
        boxes = rmac_boxes(x2 - x1, y2 - y1, levels) + np.array([x1, y1, x1, y1], np.float32)
        return add_regions(features, boxes, filt)

    return source


def detector_source(detector: LandmarkDetector, filt: RegionFilter | None = None) -> RegionSource:
    """Region source running ``detector`` on each loaded image (boxes best first)."""

    def source(image: LoadedImage, features: ImageFeatures) -> ImageFeatures:
        return add_regions(features, detector.detect(image).boxes, filt)

    return source


def _no_regions(image: LoadedImage, features: ImageFeatures) -> ImageFeatures:
    return features


def region_source(
    name: str,
    *,
    detector: LandmarkDetector | None = None,
    detector_config: DetectorConfig | None = None,
    levels: Sequence[int] = (1, 2, 3),
    filt: RegionFilter | None = None,
    **detector_overrides: Any,
) -> RegionSource:
    """A callable ``(LoadedImage, ImageFeatures) -> ImageFeatures`` that sets ``regions`` after extraction.

    :param name: ``detector``, ``rmac`` or ``none`` (see the module docstring).
    :param detector: an existing :class:`LandmarkDetector` (``detector`` source); otherwise one is built from
        ``detector_config`` updated with ``detector_overrides`` (e.g. ``checkpoint="d2r.pt"``); with a
        checkpoint and no ``detector_config``, its backbone and head settings come from the file.
    :param levels: R-MAC levels (``rmac`` source).
    :param filt: box cleaning (minimum side, full-image IoU, maximum count).
    """
    if name == "none":
        return _no_regions
    if name == "rmac":
        return rmac_source(levels, filt)
    if name == "detector":
        if detector is None:
            from glocal.models.detector import DetectorConfig, LandmarkDetector

            checkpoint = detector_overrides.get("checkpoint")
            if checkpoint and detector_config is None:
                rest = {k: v for k, v in detector_overrides.items() if k != "checkpoint"}
                detector = LandmarkDetector.from_checkpoint(checkpoint, **rest)
            else:
                detector = LandmarkDetector(replace(detector_config or DetectorConfig(), **detector_overrides))
        elif detector_overrides or detector_config is not None:
            raise ValueError("regions.py: give either a built detector or its configuration, not both")
        return detector_source(detector, filt)
    raise ValueError(f"regions.py: unknown region source {name!r}; available: {', '.join(REGION_SOURCES)}")


class RegionExtractor:
    """An extractor that also sets ``regions`` (database side of R-ASMK / regional search).

    Wraps any extractor (``.name``, ``.max_side``, ``.config``, ``.extract``) and a region source; queries
    are extracted with the plain extractor, as regional aggregation is applied to database images only.
    """

    def __init__(self, extractor: Any, source: RegionSource) -> None:
        self.inner = extractor
        self.source = source
        self.name = extractor.name
        self.config = extractor.config

    @property
    def max_side(self) -> int | None:
        return self.inner.max_side

    def extract(self, image: LoadedImage, name: str) -> ImageFeatures:
        return self.source(image, self.inner.extract(image, name))
