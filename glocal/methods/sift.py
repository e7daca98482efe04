"""``sift``, the weight-free default: RootSIFT (Arandjelovic & Zisserman, CVPR 2012) -> ASMK* (Tolias et
al., ICCV 2013) -> spatial verification of the top 100, ordered by (inliers, ASMK score).

Verification is fast spatial matching (Philbin et al., CVPR 2007; ``matcher=words``): same-word pairs from
each query feature's 5 nearest words, kept when their residual sign codes differ in at most 40 of 128 bits,
one similarity hypothesis per pair (position, scale, SIFT orientation), affine local optimisation, 20 px;
no descriptor is read. 40 bits keeps 94 % of the true same-word pairs and 10 % of the false ones on Oxford
Graf 1-4 (homographies known). The matcher and the query words per feature were chosen by leave-one-set-out
(``benchmarks/default_selection.py`` over mini-ROxf, mini-RPar, each with the other city as distractors, an
Oxford-affine set and the demo; a set is never chosen on): ``words`` with 5 query words was picked by 2 of the
4 folds, ``words`` with 3 and ``descriptors`` with ratio 0.85 by one each (``benchmarks/RESULTS.md``).
``matcher=descriptors`` is the former verifier (mutual nearest neighbours + Lowe's ratio 0.9, affine USAC,
seed 0). ``verify_min_inliers`` = 6 is the smallest inlier count with at most 1 % false positives on one
city's negative pairs, the same when fitted on either city, and 0.58 % / 0.90 % on the held-out city
(``benchmarks/calibrate_verified.py``).

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
                             word_assignments=5, max_hamming=40, verify_min_inliers=6),
        training="none",
        needs_weights=False,
        default=True,
    ),
)
