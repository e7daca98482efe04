"""Re-ranking of a shortlist by local matching and geometric verification (DELG, Cao et al. 2020).

DELG's rule: the top candidates by global similarity are verified (putative matches, then affine RANSAC)
and the final order sorts them by (inlier count, global score), both descending. Here a candidate whose
inlier count is below ``min_inliers`` counts as not verified: all such candidates come after the
verified ones, in shortlist order (shortlist score descending, then position). With ``min_inliers=0``
(the default) every candidate counts as verified and the order is exactly DELG's: candidates with no
inliers fall to the end by their shortlist score anyway. A larger ``min_inliers`` (a few tens is common
with SIFT-like features) keeps weakly verified candidates from jumping over better-scored ones.

Candidates are read one at a time through ``Sequence.__getitem__``, so a lazily loading sequence (one
feature file per access) works and holds at most one candidate's features in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from glocal.records import ImageFeatures
from glocal.rerank.matching import MatcherOptions, match_descriptors
from glocal.rerank.verification import VerifierOptions, verify_with

__all__ = ["Reranked", "final_order", "rerank"]


@dataclass(frozen=True)
class Reranked:
    """One candidate after re-ranking.

    :param position: index of the candidate in the ``candidates`` sequence given to :func:`rerank`.
    :param inliers: verified inlier count (0 when unverified or no model was found).
    :param matches: (K, 4) float32 inlier correspondences x_q, y_q, x_db, y_db in original pixels.
    :param shortlist_score: the candidate's first-stage score.
    :param verified: True when ``inliers >= min_inliers`` (ordered by inliers), else shortlist order.
    :param putative: number of putative matches before verification.
    :param is_match: the yes/no decision: ``inliers >= verify_min_inliers`` (and that threshold is >= 1).
    :param order_score: the key it was ordered by when that is not the inlier count
        (:func:`glocal.rerank.ordering.reorder`), else None.
    """

    position: int
    inliers: int
    matches: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    shortlist_score: float = 0.0
    verified: bool = False
    putative: int = 0
    is_match: bool = False
    order_score: float | None = None

    @property
    def score(self) -> float:
        """Score in the sense of ``SearchHit.score``: if verified, the key it was ordered by (the inliers unless
        :func:`glocal.rerank.ordering.reorder` set another), else the shortlist score."""
        if not self.verified:
            return self.shortlist_score
        return float(self.inliers) if self.order_score is None else self.order_score


def final_order(
    inliers: npt.ArrayLike, shortlist_scores: npt.ArrayLike, *, min_inliers: int = 0,
    keys: npt.ArrayLike | None = None,
) -> npt.NDArray[np.int64]:
    """DELG final ordering: positions sorted by (inliers, shortlist score) descending.

    Candidates with ``inliers >= min_inliers`` come first in that order; the others follow in shortlist
    order (score descending). Remaining ties keep the lower position first (stable).

    :param inliers: (K,) inlier counts.
    :param shortlist_scores: (K,) first-stage scores.
    :param min_inliers: minimum count for a candidate to be ordered by its inliers.
    :param keys: (K,) what the verified candidates are ordered by instead of their inlier counts (still
        ``>= 0``; ties broken by the shortlist score); which candidates are verified is still decided on
        ``inliers``.
    :return: (K,) positions in final order.
    """
    inl = np.asarray(inliers, dtype=np.int64)
    scores = np.asarray(shortlist_scores, dtype=np.float64)
    if inl.shape != scores.shape or inl.ndim != 1:
        raise ValueError(f"inliers and shortlist_scores must be (K,) of one length, got {inl.shape}, {scores.shape}")
    key = inl.astype(np.float64) if keys is None else np.asarray(keys, dtype=np.float64)
    if key.shape != inl.shape:
        raise ValueError(f"keys must be (K,) like inliers, got {key.shape}")
    verified = inl >= min_inliers
    key_inliers = np.where(verified, key, -1.0)  # unverified: one group below every verified key
    # np.lexsort sorts by the last key first, ascending and stable: negate for descending order
    return np.lexsort((-scores, -key_inliers, ~verified))


def rerank(
    query: ImageFeatures,
    candidates: Sequence[ImageFeatures],
    shortlist_scores: npt.ArrayLike,
    *,
    matcher: MatcherOptions | None = None,
    verifier: VerifierOptions | None = None,
    min_inliers: int = 0,
    workers: int = 1,
    verify_min_inliers: int = 0,
) -> list[Reranked]:
    """Verify each candidate against the query and return them in DELG's final order.

    :param query: query features (keypoints in original query pixels; cropped queries keep the crop's
        coordinates, which affine verification does not mind).
    :param candidates: database features of the shortlist, read in order one at a time (may load lazily).
    :param shortlist_scores: (K,) first-stage scores of the candidates, same order.
    :param matcher: putative matching options; default DELG's (nearest neighbour, L2 < 1.0) for float
        descriptors and DELG*'s (Hamming < ``hamming_threshold_from_l2(1.1, dim)``) for binary codes.
    :param verifier: verification options; default :class:`VerifierOptions` (DELG's affine model, 20 px,
        1,000 trials, seed 0, USAC_FAST estimator); ``VerifierOptions.delg_reference()`` for plain RANSAC.
    :param min_inliers: candidates with fewer inliers keep their shortlist order after the verified ones.
    :param verify_min_inliers: from this many inliers on a candidate is a match (``Reranked.is_match``; 0: none is)
    :param workers: candidates verified in parallel threads (results are identical to ``workers=1``;
        a lazily loading ``candidates`` sequence must then tolerate concurrent reads).
    :return: one :class:`Reranked` per candidate, in final order.
    """
    scores = np.asarray(shortlist_scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(candidates):
        raise ValueError(f"got {len(candidates)} candidates but {len(scores)} shortlist scores")
    if matcher is None:
        if query.descriptors.dtype == np.uint8:
            matcher = MatcherOptions.delg_binary(dim=8 * query.descriptors.shape[1])
        else:
            matcher = MatcherOptions.delg()
    verifier = verifier or VerifierOptions()

    def check(position: int) -> tuple[int, int, npt.NDArray[np.float32]]:
        cand = candidates[position]
        pairs = match_descriptors(
            query.descriptors,
            cand.descriptors,
            max_distance=matcher.max_distance,
            ratio=matcher.ratio,
            mutual=matcher.mutual,
        )
        result = verify_with(query.keypoints, cand.keypoints, pairs, verifier)
        return len(pairs), result.inliers, result.matches

    if workers > 1 and len(candidates) > 1:
        # OpenCV's matrix product and estimators release the GIL: threads use every core.
        with ThreadPoolExecutor(workers) as pool:
            found = list(pool.map(check, range(len(candidates))))
    else:
        found = [check(position) for position in range(len(candidates))]

    inliers = np.array([f[1] for f in found], dtype=np.int64)
    order = final_order(inliers, scores, min_inliers=min_inliers)
    return [
        Reranked(
            position=int(p),
            inliers=int(inliers[p]),
            matches=found[p][2],
            shortlist_score=float(scores[p]),
            verified=bool(inliers[p] >= min_inliers),
            putative=found[p][0],
            is_match=bool(verify_min_inliers >= 1 and inliers[p] >= verify_min_inliers),
        )
        for p in order
    ]
