"""Geometric verification of putative matches with a seeded robust estimator (OpenCV).

DELG re-ranking (Cao et al., ECCV 2020, appendix): an affine model fitted by RANSAC from 3-point samples,
1,000 trials, residual threshold 20 px, fixed seed; the inlier count is the verification score. The
model maps query keypoints to database keypoints (x, y in original-image pixels).

Estimators, chosen with ``method``:

- ``"ransac"``: classic RANSAC (``cv2.RANSAC``) with confidence-based early stop and Levenberg-Marquardt
  refinement of the affine model on its inliers;
- ``"usac_default"``, ``"usac_fast"``, ``"usac_accurate"``, ``"usac_magsac"``, ``"usac_prosac"``,
  ``"usac_parallel"``: OpenCV's USAC framework (``cv2.USAC_*`` flags).

OpenCV counts a point as an inlier when its reprojection error is at most ``threshold_px``. Results are
reproducible: ``cv2.setRNGSeed(seed)`` precedes every call (USAC uses its own fixed-seed generator). The
default estimator was chosen by measurement in ``benchmarks/rerank_speed.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["DEFAULT_METHOD", "METHODS", "MIN_SAMPLES", "Verification", "VerifierOptions", "verify", "verify_with"]

Model = Literal["affine", "homography"]

# minimal sample size of each model (points)
MIN_SAMPLES: dict[str, int] = {"affine": 3, "homography": 4}

METHODS: dict[str, int] = {
    "ransac": cv2.RANSAC,
    "usac_default": cv2.USAC_DEFAULT,
    "usac_fast": cv2.USAC_FAST,
    "usac_accurate": cv2.USAC_ACCURATE,
    "usac_magsac": cv2.USAC_MAGSAC,
    "usac_prosac": cv2.USAC_PROSAC,
    "usac_parallel": cv2.USAC_PARALLEL,
}

DEFAULT_METHOD = "ransac"


@dataclass(frozen=True)
class Verification:
    """Result of verifying one image pair.

    :param inliers: number of inlier matches (0 when no model was found or it had too few inliers).
    :param inlier_mask: (M,) bool, one entry per putative match.
    :param transform: (2, 3) affine or (3, 3) homography mapping query to database pixels, or None.
    :param matches: (K, 4) float32 inlier correspondences x_q, y_q, x_db, y_db in original pixels.
    """

    inliers: int
    inlier_mask: npt.NDArray[np.bool_]
    transform: npt.NDArray[np.float64] | None = None
    matches: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 4), np.float32))

    @classmethod
    def failed(cls, num_matches: int) -> Verification:
        """No model: 0 inliers, an all-False mask over ``num_matches`` putative matches."""
        return cls(inliers=0, inlier_mask=np.zeros(num_matches, bool))


@dataclass(frozen=True)
class VerifierOptions:
    """Options of :func:`verify`; the defaults are DELG's (affine, 20 px, 1,000 trials, seed 0).

    :param model: ``"affine"`` (DELG) or ``"homography"``.
    :param method: estimator name, a key of :data:`METHODS`.
    :param threshold_px: maximum reprojection error of an inlier, in original-image pixels.
    :param max_iters: maximum number of RANSAC trials.
    :param confidence: early-stop confidence of the estimator.
    :param seed: seed of OpenCV's random generator, set before each call.
    :param min_inliers: a model with fewer inliers counts as no model (0 inliers); ``None``: the minimal
        sample size (3 affine, 4 homography).
    """

    model: Model = "affine"
    method: str = DEFAULT_METHOD
    threshold_px: float = 20.0
    max_iters: int = 1000
    confidence: float = 0.999
    seed: int = 0
    min_inliers: int | None = None


def verify(
    query_kp: npt.NDArray,
    db_kp: npt.NDArray,
    matches: npt.NDArray,
    *,
    model: Model = "affine",
    method: str = DEFAULT_METHOD,
    threshold_px: float = 20.0,
    max_iters: int = 1000,
    confidence: float = 0.999,
    seed: int = 0,
    min_inliers: int | None = None,
) -> Verification:
    """Fit a query-to-database transform to putative matches and count its inliers (DELG re-ranking).

    Fewer matches than the minimal sample (3 affine, 4 homography), a degenerate configuration (e.g. all
    points at one location) or a model with fewer than ``min_inliers`` inliers give 0 inliers, no error.

    :param query_kp: (N, 2) query keypoints x, y.
    :param db_kp: (M, 2) database keypoints x, y.
    :param matches: (K, 2) integer rows (query index, database index), e.g. from ``match_descriptors``.
    :param model: ``"affine"`` (2x3, ``cv2.estimateAffine2D``) or ``"homography"`` (3x3,
        ``cv2.findHomography``).
    :param method: estimator, a key of :data:`METHODS`.
    :param threshold_px: inlier reprojection threshold in pixels (DELG: 20).
    :param max_iters: maximum trials (DELG: 1,000).
    :param confidence: confidence for the early stop.
    :param seed: seed for ``cv2.setRNGSeed`` before the call: the same inputs give the same result.
    :param min_inliers: minimum inliers for a model to count; ``None``: the minimal sample size.
    :return: :class:`Verification`.
    """
    if model not in MIN_SAMPLES:
        raise ValueError(f"model must be one of {sorted(MIN_SAMPLES)}, got {model!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    matches = np.asarray(matches)
    if matches.ndim != 2 or matches.shape[1] != 2:
        raise ValueError(f"matches must be (K, 2) index pairs, got shape {matches.shape}")
    num = len(matches)
    sample = MIN_SAMPLES[model]
    needed = sample if min_inliers is None else max(sample, int(min_inliers))
    if num < needed:
        return Verification.failed(num)

    src = np.ascontiguousarray(np.asarray(query_kp, np.float32)[matches[:, 0]])
    dst = np.ascontiguousarray(np.asarray(db_kp, np.float32)[matches[:, 1]])
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("keypoints of the matches contain NaN or infinite coordinates")
    flag = METHODS[method]
    cv2.setRNGSeed(int(seed))
    try:
        if model == "affine":
            transform, mask = cv2.estimateAffine2D(
                src,
                dst,
                method=flag,
                ransacReprojThreshold=float(threshold_px),
                maxIters=int(max_iters),
                confidence=float(confidence),
            )
        else:
            transform, mask = cv2.findHomography(
                src,
                dst,
                method=flag,
                ransacReprojThreshold=float(threshold_px),
                maxIters=int(max_iters),
                confidence=float(confidence),
            )
    except cv2.error:
        # OpenCV raises on some degenerate inputs (e.g. USAC with collinear or repeated points)
        return Verification.failed(num)
    if transform is None or mask is None or not np.isfinite(transform).all():
        return Verification.failed(num)
    inlier_mask = mask.reshape(-1).astype(bool)
    count = int(inlier_mask.sum())
    if count < needed:
        return Verification.failed(num)
    inlier_matches = np.concatenate([src[inlier_mask], dst[inlier_mask]], axis=1).astype(np.float32)
    return Verification(inliers=count, inlier_mask=inlier_mask, transform=transform, matches=inlier_matches)


def verify_with(
    query_kp: npt.NDArray, db_kp: npt.NDArray, matches: npt.NDArray, options: VerifierOptions
) -> Verification:
    """:func:`verify` with its options given as a :class:`VerifierOptions` record."""
    return verify(
        query_kp,
        db_kp,
        matches,
        model=options.model,
        method=options.method,
        threshold_px=options.threshold_px,
        max_iters=options.max_iters,
        confidence=options.confidence,
        seed=options.seed,
        min_inliers=options.min_inliers,
    )
