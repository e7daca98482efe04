"""Typed records that travel between the pipeline stages.

Every stage (io -> models -> extract -> index -> rerank -> evaluate) speaks through these small
dataclasses of numpy arrays, so each stage can be read and tested alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class ImageFeatures:
    """Features of one image.

    :param name: image identifier (relative path or dataset name), unique within a collection.
    :param image_size: (height, width) of the *original* image in pixels, before any resizing.
    :param descriptors: (N, d) local descriptors (float32 / float16, or uint8 packed bits).
    :param keypoints: (N, 2) float32 (x, y) pixel coordinates in the original image.
    :param scales: (N,) float32 scale of each feature, in original-image pixels.
    :param strengths: (N,) float32 attention / norm / detector response; higher is stronger.
    :param global_descriptor: optional (G, D) float32 global vector(s), L2-normalised rows.
    :param regions: optional (R, 4) float32 boxes x1, y1, x2, y2 in original-image pixels.
    :param orientations: optional (N,) float32 dominant orientation of each feature in radians (SIFT's angle,
        image axes); with scales and keypoints one correspondence gives a similarity transform.
    """

    name: str
    image_size: tuple[int, int]
    descriptors: npt.NDArray
    keypoints: npt.NDArray[np.float32]
    scales: npt.NDArray[np.float32]
    strengths: npt.NDArray[np.float32]
    global_descriptor: npt.NDArray[np.float32] | None = None
    regions: npt.NDArray[np.float32] | None = None
    orientations: npt.NDArray[np.float32] | None = None

    def __post_init__(self) -> None:
        n = len(self.descriptors)
        if self.descriptors.ndim != 2:
            raise ValueError(f"{self.name}: descriptors must be (N, d), got shape {self.descriptors.shape}")
        if self.keypoints.shape != (n, 2):
            raise ValueError(f"{self.name}: keypoints must be ({n}, 2), got {self.keypoints.shape}")
        for what in ("scales", "strengths"):
            arr = getattr(self, what)
            if arr.shape != (n,):
                raise ValueError(f"{self.name}: {what} must be ({n},), got {arr.shape}")
        if self.orientations is not None and self.orientations.shape != (n,):
            raise ValueError(f"{self.name}: orientations must be ({n},), got {self.orientations.shape}")
        if self.global_descriptor is not None and self.global_descriptor.ndim != 2:
            raise ValueError(f"{self.name}: global_descriptor must be (G, D), got {self.global_descriptor.shape}")
        if self.regions is not None and (self.regions.ndim != 2 or self.regions.shape[1] != 4):
            raise ValueError(f"{self.name}: regions must be (R, 4), got {self.regions.shape}")

    @property
    def num_features(self) -> int:
        return len(self.descriptors)

    def select(self, index: npt.NDArray) -> ImageFeatures:
        """Return a copy keeping only the local features at ``index`` (boolean mask or integer indices)."""
        return ImageFeatures(
            name=self.name,
            image_size=self.image_size,
            descriptors=self.descriptors[index],
            keypoints=self.keypoints[index],
            scales=self.scales[index],
            strengths=self.strengths[index],
            global_descriptor=self.global_descriptor,
            regions=self.regions,
            orientations=None if self.orientations is None else self.orientations[index],
        )

    def in_box(self, box: tuple[float, float, float, float]) -> ImageFeatures:
        """Keep local features whose keypoint lies inside ``box`` = (x1, y1, x2, y2)."""
        x1, y1, x2, y2 = box
        kp = self.keypoints
        inside = (kp[:, 0] >= x1) & (kp[:, 0] <= x2) & (kp[:, 1] >= y1) & (kp[:, 1] <= y2)
        return self.select(inside)


@dataclass(frozen=True)
class SearchHit:
    """One database image returned for a query.

    :param index: position of the image in the collection.
    :param name: its name.
    :param score: the final score used for ordering (inliers when verified, else the shortlist score).
    :param shortlist_score: similarity from the first stage (ASMK or global).
    :param inliers: number of RANSAC inliers (0 when not verified).
    :param matches: (M, 4) inlier correspondences x_q, y_q, x_db, y_db in original pixels.
    :param verified: the decision of spatial verification: True when the image was verified and reached the
        method's calibrated inlier threshold (``verify_min_inliers``), i.e. it shows the query's object.
    """

    index: int
    name: str
    score: float
    shortlist_score: float
    inliers: int = 0
    matches: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    verified: bool = False

    def to_dict(self, with_matches: bool = False) -> dict:
        d = {
            "index": int(self.index),
            "name": self.name,
            "score": float(self.score),
            "shortlist_score": float(self.shortlist_score),
            "inliers": int(self.inliers),
            "verified": bool(self.verified),
        }
        if with_matches:
            d["matches"] = self.matches.round(2).tolist()
        return d
