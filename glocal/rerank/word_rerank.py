"""Re-ranking a shortlist with fast spatial matching: shared words -> similarity hypotheses -> affine LO.

:func:`rerank_words` is the words counterpart of :func:`glocal.rerank.shortlist.rerank`: the same
:class:`~glocal.rerank.shortlist.Reranked` results in the same final order (:func:`final_order`), but the
tentative correspondences come from visual words (:mod:`glocal.rerank.word_matching`) and the whole shortlist
is verified in one batch of array operations (:mod:`glocal.rerank.similarity_ransac`).

Early stop: a candidate's one-to-one inlier count cannot exceed the number of distinct query features among
its tentative correspondences. With ``min_inliers`` >= 1 (order ``verified``), a candidate whose bound is
below ``min_inliers`` cannot be ordered by inliers whatever its verification finds, so it is not verified
(it keeps its shortlist place among the unverified, exactly as if it had been); a bound below 3 cannot give
a model at all.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from glocal.rerank.shortlist import Reranked, final_order
from glocal.rerank.similarity_ransac import verify_batch
from glocal.rerank.word_matching import QueryWords, WordFeatures, tentative_correspondences

__all__ = ["WordVerifierOptions", "rerank_words"]


@dataclass(frozen=True)
class WordVerifierOptions:
    """Options of :func:`rerank_words` (see :class:`glocal.methods.stages.RerankOptions` for their help)."""

    assignments: int = 1
    max_hamming: int | None = None
    hypotheses: int = 32
    lo_iterations: int = 3
    threshold_px: float = 20.0
    consistency: bool = True
    lo_hypotheses: int = 1
    #: numba loops (None: where numba is installed; False: the array code); the results are the same
    compiled: bool | None = None


def rerank_words(query: QueryWords, candidates: Sequence[WordFeatures], shortlist_scores: npt.ArrayLike,
                 options: WordVerifierOptions | None = None, *, min_inliers: int = 0,
                 verify_min_inliers: int = 0) -> list[Reranked]:
    """Verify every candidate against the query and return them in final order (module docstring).

    :param min_inliers: candidates with fewer inliers keep their shortlist order after the others
        (:func:`final_order`); also the early-stop bound.
    :param verify_min_inliers: from this many inliers on a candidate is a match (``is_match``; 0: none is).
    """
    options = options or WordVerifierOptions()
    scores = np.asarray(shortlist_scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(candidates):
        raise ValueError(f"got {len(candidates)} candidates but {len(scores)} shortlist scores")
    corr = tentative_correspondences(query, candidates, options.assignments, options.max_hamming,
                                     compiled=options.compiled)
    active = corr.unique_query >= max(3, int(min_inliers))
    result = verify_batch(corr, options.threshold_px, options.hypotheses, options.lo_iterations,
                          options.consistency, active=active, refine=options.lo_hypotheses,
                          compiled=options.compiled)
    inliers = result.inliers
    order = final_order(inliers, scores, min_inliers=min_inliers)
    out = []
    for p in order:
        lo, hi = corr.bounds[p], corr.bounds[p + 1]
        m = result.inlier_mask[lo:hi]
        matches = np.concatenate([corr.src[lo:hi][m], corr.dst[lo:hi][m]], axis=1).astype(np.float32)
        out.append(Reranked(
            position=int(p), inliers=int(inliers[p]), matches=matches, shortlist_score=float(scores[p]),
            verified=bool(inliers[p] >= min_inliers), putative=int(hi - lo),
            is_match=bool(verify_min_inliers >= 1 and inliers[p] >= verify_min_inliers),
        ))
    return out
