"""RootSIFT local features from OpenCV: the weight-free default method.

RootSIFT (Arandjelovic & Zisserman, CVPR 2012): L1-normalise each SIFT descriptor, take the element-wise
square root; the result is L2-normalised and its Euclidean distance equals the Hellinger kernel.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

from glocal.io.images import LoadedImage
from glocal.records import ImageFeatures


def root_sift(desc: npt.NDArray[np.float32], eps: float = 1e-7) -> npt.NDArray[np.float32]:
    """RootSIFT: ``sqrt(d / ||d||_1)``; rows come out L2-normalised."""
    desc = np.asarray(desc, dtype=np.float32)
    desc = desc / (np.abs(desc).sum(axis=1, keepdims=True) + eps)
    return np.sqrt(desc)


@dataclass(frozen=True)
class SiftConfig:
    """Extraction settings (defaults used by the ``sift`` method); each field carries one line of help."""

    max_keypoints: int = field(default=2000, metadata={
        "help": "keep the strongest responses, at most this many keypoints per image"})
    contrast_threshold: float = field(default=0.02, metadata={
        "help": "OpenCV's DoG contrast threshold (lower: more, weaker keypoints)"})
    edge_threshold: float = field(default=10.0, metadata={
        "help": "OpenCV's edge threshold (higher: fewer edge-like keypoints filtered out)"})
    max_side: int = field(default=1024, metadata={
        "help": "images are loaded with their longest side at most this many pixels"})
    n_octave_layers: int = field(default=3, metadata={
        "help": "OpenCV's DoG layers per octave (Lowe: 3)"})
    sigma: float = field(default=1.6, metadata={
        "help": "OpenCV's Gaussian blur of the first octave (Lowe: 1.6)"})


class RootSiftExtractor:
    """RootSIFT keypoints and 128-D descriptors; keypoints in original-image pixels."""

    name = "sift"
    descriptor_dim = 128

    def __init__(self, config: SiftConfig | None = None) -> None:
        self.config = config or SiftConfig()
        # nfeatures=0 keeps all; we select by response ourselves to get a deterministic order.
        self._sift = cv2.SIFT_create(
            nfeatures=0, nOctaveLayers=self.config.n_octave_layers, contrastThreshold=self.config.contrast_threshold,
            edgeThreshold=self.config.edge_threshold, sigma=self.config.sigma,
        )

    @property
    def max_side(self) -> int:
        return self.config.max_side

    def extract(self, image: LoadedImage, name: str) -> ImageFeatures:
        """Extract features of one loaded image; keypoints and scales come out in original-image pixels
        (the resize is undone and the crop offset added)."""
        kps, desc = self._sift.detectAndCompute(image.gray, None)
        n = len(kps)
        if n == 0 or desc is None:
            return ImageFeatures(
                name=name, image_size=image.original_size,
                descriptors=np.zeros((0, 128), np.float32), keypoints=np.zeros((0, 2), np.float32),
                scales=np.zeros(0, np.float32), strengths=np.zeros(0, np.float32),
                orientations=np.zeros(0, np.float32),
            )
        xy = np.array([k.pt for k in kps], dtype=np.float32)
        size = np.array([k.size for k in kps], dtype=np.float32)
        response = np.array([k.response for k in kps], dtype=np.float32)
        # OpenCV's angle is in degrees, from +x towards +y in image axes (y down): an image rotated by R turns
        # every angle by R's angle (checked in tests/rerank/test_word_verification.py)
        angle = np.deg2rad(np.array([k.angle for k in kps], dtype=np.float32)).astype(np.float32)
        # strongest first; stable sort on (-response, y, x) for a reproducible order
        order = np.lexsort((xy[:, 0], xy[:, 1], -response))[: self.config.max_keypoints]
        inv = 1.0 / image.scale
        keypoints = xy[order] * inv + np.asarray(image.offset, np.float32)
        return ImageFeatures(
            name=name,
            image_size=image.original_size,
            descriptors=root_sift(desc[order]),
            keypoints=keypoints.astype(np.float32),
            scales=(size[order] * inv).astype(np.float32),
            strengths=response[order],
            orientations=angle[order],
        )
