"""Re-ranking: local matching, geometric verification and the DELG shortlist re-ordering.

A shortlist from the first stage (global or ASMK) is re-ordered by the number of geometrically verified
local matches (DELG, Cao et al., ECCV 2020): :func:`match_descriptors` gives putative matches,
:func:`verify` fits a seeded robust affine (or homography) model, :func:`rerank` applies both to each
candidate and sorts by (inlier count, shortlist score).
"""

from glocal.rerank.matching import (
    MatcherOptions,
    hamming_distances,
    hamming_threshold_from_l2,
    match_descriptors,
)
from glocal.rerank.shortlist import Reranked, final_order, rerank
from glocal.rerank.verification import (
    Verification,
    VerifierOptions,
    verify,
    verify_with,
)

__all__ = [
    "MatcherOptions",
    "Reranked",
    "Verification",
    "VerifierOptions",
    "final_order",
    "hamming_distances",
    "hamming_threshold_from_l2",
    "match_descriptors",
    "rerank",
    "verify",
    "verify_with",
]
