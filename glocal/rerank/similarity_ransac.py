"""Spatial verification from single-correspondence similarity hypotheses with local optimisation, batched.

Fast spatial matching (Philbin et al., CVPR 2007, sec. 3.1): a SIFT correspondence (x_q, s_q, theta_q) ->
(x_d, s_d, theta_d) fixes a similarity on its own,

    x' = s R(theta) x + t,   s = s_d / s_q,   theta = theta_d - theta_q,   t = x_d - s R(theta) x_q,

(theta = 0 for upright features, the gravity-vector assumption), so instead of ~1,000 random 3-point samples
a few hypotheses are enough: here the ``hypotheses`` correspondences with the smallest residual-code
distance of each candidate (ties: the earlier pair), every one scored against the candidate's pairs (its
best :data:`SCORING_PAIRS` by code distance when it has more).
A pair supports a hypothesis when it lands within ``threshold_px`` and, when ``consistency`` is set, its own
scale ratio is within a factor 2 of s and its orientation difference within 30 degrees of theta (both
from the correspondence's own frame). The best hypothesis (the ``refine`` best, each on its own, keeping the best result) is refined by local
optimisation (LO-RANSAC,
Chum, Matas & Kittler, DAGM 2003): an affine map is fitted by least squares to its inliers,

    min_A sum_i || A [x_q,i; 1] - x_d,i ||^2   (normal equations, one 3 x 3 system per candidate),

its inliers are recounted (reprojection error <= ``threshold_px``, position only, as DELG counts them) and
the fit repeated ``lo_iterations`` times; a refit that loses inliers is not kept. The inliers are made
one-to-one (the first pair of each query feature, then of each database feature), so a burst of repeated
words cannot inflate the count. Everything is deterministic (no random sampling).

Two implementations give the same results bit for bit: the array code below (all candidates at once, the
reference) and, where numba is installed, the loops of :mod:`glocal.rerank.word_kernels` (one candidate at a
time, no per-pair arrays: ``compiled``; ``benchmarks/sift_speed.py --compare-paths`` checks every query).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from glocal.rerank.word_matching import Correspondences

__all__ = ["BatchVerification", "verify_batch"]

#: a supporting pair's scale ratio is within this factor of the hypothesis's ...
SCALE_FACTOR = 2.0
#: ... and its orientation difference within this angle (radians, 30 degrees)
ANGLE_TOLERANCE = np.pi / 6
#: hypotheses are scored against at most this many of a candidate's pairs (smallest code distance first): the
#: scoring costs hypotheses x pairs, and without a code filter a candidate can have thousands of pairs
SCORING_PAIRS = 1024
#: numba is optional: without it the array code runs (same results)
COMPILED = importlib.util.find_spec("numba") is not None


@lru_cache(maxsize=1)
def ratio_bounds() -> tuple[float, float] | None:
    """(r_lo, r_hi): ``np.abs(np.log(r)) <= np.log(SCALE_FACTOR)`` holds exactly for r_lo <= r <= r_hi, found
    by probing numpy's ``log`` on the 257 floats around each end (None when it is not monotonic there)."""
    limit = np.log(SCALE_FACTOR)
    ends = []
    for centre, inside_below in ((SCALE_FACTOR, True), (1.0 / SCALE_FACTOR, False)):
        r = np.full(257, centre)
        for i in range(1, 129):
            r[128 + i] = np.nextafter(r[127 + i], np.inf)
            r[128 - i] = np.nextafter(r[129 - i], -np.inf)
        ok = np.abs(np.log(r)) <= limit
        k = int(np.argmin(ok)) if inside_below else int(np.argmax(ok))
        expected = np.arange(257) < k if inside_below else np.arange(257) >= k
        if not (ok == expected).all() or k in (0, 256):
            return None
        ends.append(float(r[k - 1]) if inside_below else float(r[k]))
    return ends[1], ends[0]


@lru_cache(maxsize=1)
def _kernels():  # noqa: ANN202
    from glocal.rerank import word_kernels  # lazy: numba is imported on the first compiled query

    return word_kernels


@dataclass(frozen=True)
class BatchVerification:
    """Per candidate: ``inliers`` (C,) one-to-one count, ``transforms`` (C, 2, 3) query -> database affine
    (NaN where none), and ``inlier_mask`` (T,) over the correspondences."""

    inliers: npt.NDArray[np.int64]
    transforms: npt.NDArray[np.float64]
    inlier_mask: npt.NDArray[np.bool_]


def _segment_ranges(counts: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Concatenated ``arange(c)`` for every count ``c``."""
    total = int(counts.sum())
    starts = np.cumsum(counts) - counts
    return np.arange(total) - np.repeat(starts, counts)


def _one_to_one(mask: npt.NDArray[np.bool_], cand: npt.NDArray[np.int64], corr: Correspondences,
                n: int) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
    """The masked pairs made one-to-one (the first pair of each query feature, then of each database feature,
    in pair order) and their count per candidate."""
    idx = np.flatnonzero(mask)
    width = int(max(corr.query.max(initial=0), corr.db.max(initial=0))) + 1
    c = cand[idx]
    idx = idx[np.sort(np.unique(c * width + corr.query[idx], return_index=True)[1])]
    c = cand[idx]
    idx = idx[np.sort(np.unique(c * width + corr.db[idx], return_index=True)[1])]
    out = np.zeros(len(mask), bool)
    out[idx] = True
    return out, np.bincount(cand[idx], minlength=n).astype(np.int64)


def _fit_affine(mask: npt.NDArray[np.bool_], cand: npt.NDArray[np.int64], corr: Correspondences, n: int
                ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Least-squares affine (C, 2, 3) of every candidate on its masked pairs; ok (C,) where well posed."""
    c = cand[mask]
    x, y = corr.src[mask, 0], corr.src[mask, 1]
    u, v = corr.dst[mask, 0], corr.dst[mask, 1]
    cnt = np.bincount(c, minlength=n).astype(np.float64)
    # centre each candidate's points (better conditioned normal equations)
    mx = np.bincount(c, x, n) / np.maximum(cnt, 1)
    my = np.bincount(c, y, n) / np.maximum(cnt, 1)
    mu = np.bincount(c, u, n) / np.maximum(cnt, 1)
    mv = np.bincount(c, v, n) / np.maximum(cnt, 1)
    xc, yc, uc, vc = x - mx[c], y - my[c], u - mu[c], v - mv[c]
    sxx, sxy, syy = np.bincount(c, xc * xc, n), np.bincount(c, xc * yc, n), np.bincount(c, yc * yc, n)
    sxu, syu = np.bincount(c, xc * uc, n), np.bincount(c, yc * uc, n)
    sxv, syv = np.bincount(c, xc * vc, n), np.bincount(c, yc * vc, n)
    det = sxx * syy - sxy * sxy
    ok = (cnt >= 3) & (det > 1e-6 * np.maximum(sxx * syy, 1e-12))
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    a11 = (sxu * syy - syu * sxy) * inv
    a12 = (syu * sxx - sxu * sxy) * inv
    a21 = (sxv * syy - syv * sxy) * inv
    a22 = (syv * sxx - sxv * sxy) * inv
    out = np.full((n, 2, 3), np.nan)
    out[:, 0, 0], out[:, 0, 1], out[:, 0, 2] = a11, a12, mu - a11 * mx - a12 * my
    out[:, 1, 0], out[:, 1, 1], out[:, 1, 2] = a21, a22, mv - a21 * mx - a22 * my
    ok &= np.isfinite(out).all(axis=(1, 2))
    return out, ok


def _affine_inliers(models: npt.NDArray[np.float64], cand: npt.NDArray[np.int64], corr: Correspondences,
                    thr2: float) -> npt.NDArray[np.bool_]:
    m = models[cand]
    px = m[:, 0, 0] * corr.src[:, 0] + m[:, 0, 1] * corr.src[:, 1] + m[:, 0, 2] - corr.dst[:, 0]
    py = m[:, 1, 0] * corr.src[:, 0] + m[:, 1, 1] * corr.src[:, 1] + m[:, 1, 2] - corr.dst[:, 1]
    with np.errstate(invalid="ignore"):
        return px * px + py * py <= thr2


def verify_batch(corr: Correspondences, threshold_px: float = 20.0, hypotheses: int = 32, lo_iterations: int = 3,
                 consistency: bool = True, active: npt.NDArray[np.bool_] | None = None, refine: int = 1,
                 compiled: bool | None = None) -> BatchVerification:
    """Verify every candidate of ``corr`` (module docstring); ``active`` (C,) False skips a candidate (0);
    ``refine``: hypotheses per candidate refined by local optimisation (the best result is kept);
    ``compiled``: the numba loops (None: where numba is installed; False: the array code; same results)."""
    bounds = ratio_bounds() if consistency else (0.0, 0.0)
    if (COMPILED if compiled is None else compiled) and bounds is not None:
        return _verify_compiled(corr, threshold_px, hypotheses, lo_iterations, consistency, active, refine, bounds)
    n = len(corr.bounds) - 1
    counts = corr.counts.copy()
    if active is not None:
        counts = np.where(active, counts, 0)
    cand = corr.candidate
    thr2 = float(threshold_px) ** 2
    inliers = np.zeros(n, np.int64)
    transforms = np.full((n, 2, 3), np.nan)
    mask = np.zeros(len(cand), bool)
    if n == 0 or counts.sum() == 0:
        return BatchVerification(inliers, transforms, mask)
    # hypotheses: each candidate's first ``hypotheses`` pairs by (code distance, position)
    order = np.lexsort((np.arange(len(cand)), corr.distance, cand))
    rank = _segment_ranges(corr.counts)
    n_hyp = np.minimum(counts, int(hypotheses))
    chosen = order[rank < n_hyp[cand]]
    h_cand = cand[chosen]
    s = corr.scale[chosen]
    theta = corr.angle[chosen] if corr.angle is not None else np.zeros(len(chosen))
    a, b = s * np.cos(theta), s * np.sin(theta)
    tx = corr.dst[chosen, 0] - (a * corr.src[chosen, 0] - b * corr.src[chosen, 1])
    ty = corr.dst[chosen, 1] - (b * corr.src[chosen, 0] + a * corr.src[chosen, 1])
    # every hypothesis against its candidate's first SCORING_PAIRS pairs by code distance (``order`` lists each
    # candidate's pairs in one block, at the candidate's bounds, best first)
    per_h = np.minimum(counts[h_cand], SCORING_PAIRS)
    h_of = np.repeat(np.arange(len(chosen)), per_h)
    pair = order[corr.bounds[h_cand][h_of] + _segment_ranges(per_h)]
    sx, sy = corr.src[pair, 0], corr.src[pair, 1]
    ex = a[h_of] * sx - b[h_of] * sy + tx[h_of] - corr.dst[pair, 0]
    ey = b[h_of] * sx + a[h_of] * sy + ty[h_of] - corr.dst[pair, 1]
    support = ex * ex + ey * ey <= thr2
    if consistency:
        support &= np.abs(np.log(corr.scale[pair] / s[h_of])) <= np.log(SCALE_FACTOR)
        if corr.angle is not None:
            d = np.mod(corr.angle[pair] - theta[h_of] + np.pi, 2 * np.pi) - np.pi  # wrapped to [-pi, pi)
            support &= np.abs(d) <= ANGLE_TOLERANCE
    score = np.bincount(h_of, support, len(chosen))
    # the ``refine`` best hypotheses of each candidate (highest support, then the earlier hypothesis) are each
    # refined on all the candidate's pairs, as "virtual" candidates; each candidate keeps its best result
    by_score = np.lexsort((np.arange(len(chosen)), -score, h_cand))
    group_rank = _segment_ranges(np.bincount(h_cand[by_score], minlength=n))
    sel = by_score[group_rank < max(1, int(refine))]
    v_cand = h_cand[sel]
    n_v = len(sel)
    v_of = np.repeat(np.arange(n_v), counts[v_cand])
    vpair = corr.bounds[v_cand][v_of] + _segment_ranges(counts[v_cand])
    vcorr = Correspondences(corr.query[vpair], corr.db[vpair], corr.distance[vpair], corr.src[vpair],
                            corr.dst[vpair], corr.scale[vpair], None, np.concatenate([[0], np.cumsum(counts[v_cand])]),
                            corr.unique_query[v_cand])
    h = sel[v_of]
    ex = a[h] * vcorr.src[:, 0] - b[h] * vcorr.src[:, 1] + tx[h] - vcorr.dst[:, 0]
    ey = b[h] * vcorr.src[:, 0] + a[h] * vcorr.src[:, 1] + ty[h] - vcorr.dst[:, 1]
    start = ex * ex + ey * ey <= thr2  # the hypothesis's support (as scored) on all the candidate's pairs
    if consistency:
        start &= np.abs(np.log(vcorr.scale / s[h])) <= np.log(SCALE_FACTOR)
        if corr.angle is not None:
            d = np.mod(corr.angle[vpair] - theta[h] + np.pi, 2 * np.pi) - np.pi
            start &= np.abs(d) <= ANGLE_TOLERANCE
    vmask, v_inliers = _one_to_one(start, v_of, vcorr, n_v)
    v_models = np.stack([np.stack([a[sel], -b[sel], tx[sel]], 1), np.stack([b[sel], a[sel], ty[sel]], 1)], 1)
    for _ in range(int(lo_iterations)):
        models, ok = _fit_affine(vmask, v_of, vcorr, n_v)
        new_mask, new_inliers = _one_to_one(_affine_inliers(models, v_of, vcorr, thr2) & ok[v_of], v_of, vcorr, n_v)
        better = ok & (new_inliers >= v_inliers)
        if not better.any():
            break
        vmask = np.where(better[v_of], new_mask, vmask)
        v_inliers = np.where(better, new_inliers, v_inliers)
        v_models = np.where(better[:, None, None], models, v_models)
    # per candidate, the virtual candidate with the most inliers (then the better-supported hypothesis)
    pick = np.lexsort((np.arange(n_v), -v_inliers, v_cand))
    first = np.ones(n_v, bool)
    first[1:] = v_cand[pick][1:] != v_cand[pick][:-1]
    best_v = pick[first]
    inliers = np.zeros(n, np.int64)
    inliers[v_cand[best_v]] = v_inliers[best_v]
    transforms = np.full((n, 2, 3), np.nan)
    transforms[v_cand[best_v]] = v_models[best_v]
    is_best = np.zeros(n_v, bool)
    is_best[best_v] = True
    mask = np.zeros(len(cand), bool)
    mask[vpair[vmask & is_best[v_of]]] = True
    if active is not None:
        mask &= active[cand]
        inliers = np.where(active, inliers, 0)
    return BatchVerification(inliers, transforms, mask)


def _verify_compiled(corr: Correspondences, threshold_px: float, hypotheses: int, lo_iterations: int,
                     consistency: bool, active: npt.NDArray[np.bool_] | None, refine: int,
                     bounds: tuple[float, float]) -> BatchVerification:
    n = len(corr.bounds) - 1
    act = np.ones(n, bool) if active is None else np.asarray(active, bool)
    has_angle = corr.angle is not None
    angle = np.ascontiguousarray(corr.angle, np.float64) if has_angle else np.zeros(len(corr.query))
    # numpy's cos / sin (the array code's values), for every pair: a hypothesis is one of them
    cos_a, sin_a = (np.cos(angle), np.sin(angle)) if has_angle else (np.ones(len(angle)), np.zeros(len(angle)))
    c = np.ascontiguousarray
    inliers, transforms, mask = _kernels().verify_candidates(
        c(corr.bounds, np.int64), c(act), c(corr.distance, np.int64), c(corr.src, np.float64), c(corr.dst, np.float64),
        c(corr.scale, np.float64), angle, cos_a, sin_a, c(corr.query, np.int64), c(corr.db, np.int64),
        int(hypotheses), int(SCORING_PAIRS), int(refine), int(lo_iterations), float(threshold_px) ** 2,
        bool(consistency), has_angle, bounds[0], bounds[1])
    return BatchVerification(inliers, transforms, mask)
