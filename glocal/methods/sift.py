"""``sift``, the weight-free default: RootSIFT (Arandjelovic & Zisserman, CVPR 2012) -> ASMK* (Tolias et
al., ICCV 2013) -> spatial verification of the top 100, ordered by spatially distinct inliers plus a share of
the ASMK score.

Verification is fast spatial matching (Philbin et al., CVPR 2007; ``matcher=words``): same-word pairs from
each query feature's 10 nearest words (5 of them also serve the ASMK* first stage), kept when their residual
sign codes differ in at most 40 of 128 bits, one similarity hypothesis per pair (position, scale, SIFT
orientation), affine local optimisation, 20 px; no descriptor is read. 40 bits keeps 94 % of the true same-word
pairs and 10 % of the false ones on Oxford Graf 1-4 (homographies known). The matcher and the query words per
feature were chosen by leave-one-set-out (``benchmarks/default_selection.py`` over mini-ROxf, mini-RPar, each
with the other city as distractors, an Oxford-affine set and the demo; a set is never chosen on). Session 5:
``words`` with 5 query words (2 of 4 folds) over 3 words and the descriptor verifier. Session 6: 10 query words
(3 of 4 folds; 8 words by the fourth) over 5, 8, 16 and hybrids with descriptor matching of the top 10
(``descriptor_top``): quantising to 4,096 words loses correspondences under strong viewpoint change and more
query words recover them (``benchmarks/RESULTS.md``, "Selection, session 6").
``matcher=descriptors`` is the former verifier (mutual nearest neighbours + Lowe's ratio 0.9, affine USAC,
seed 0). ``verify_min_inliers`` = 8 is the smallest inlier count with at most 1 % false positives on one
city's negative pairs, the larger of the two cities' (8 fitted on Oxford: 0.41 % held out on Paris; 7 fitted on
Paris would let 1.15 % of Oxford's through) (``benchmarks/calibrate_verified.py``).

The order (session 8, ``benchmarks/sift_order_candidates.json``, leave-one-set-out, 3 of 4 folds): inliers are
counted once per 16 px cell (``inlier_cell_px``) and 8 x ASMK score / best ASMK score is added
(``shortlist_weight``), :mod:`glocal.rerank.ordering`. Plain inlier counts let bursts of inliers on repeated
structures of other buildings rank above true matches with few inliers; the decision still counts inliers.

The codebook is smaller than the deep methods' (4,096 words): user collections are often small and the size
is clipped to the training sample anyway (the build says so).
"""
from __future__ import annotations

from glocal.methods.spec import MethodSpec, lazy_extractor
from glocal.methods.stages import AsmkIndexOptions, RerankOptions
from glocal.models.sift import SiftConfig

_build = lazy_extractor("glocal.models.sift", "RootSiftExtractor")


SPECS = (
    MethodSpec(
        name="sift",
        summary="RootSIFT -> ASMK* -> verification of the top 100 (no weights)",
        paper="Arandjelovic & Zisserman, CVPR 2012 (RootSIFT); Tolias et al., ICCV 2013 (ASMK*)",
        extractor=SiftConfig(),
        build_extractor=_build,
        index=AsmkIndexOptions(codebook_size=4096),
        rerank=RerankOptions(rerank_top=100, ratio=0.9, mutual=True, estimator="usac_fast", matcher="words",
                             word_assignments=10, max_hamming=40, verify_min_inliers=8,
                             inlier_cell_px=16.0, shortlist_weight=8.0),
        training="none",
        needs_weights=False,
        default=True,
    ),
)
