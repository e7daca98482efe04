"""``sift``, the weight-free default: RootSIFT (Arandjelovic & Zisserman, CVPR 2012) -> ASMK* (Tolias et
al., ICCV 2013) -> spatial verification of the top 100 (mutual nearest neighbours + Lowe's ratio, affine
USAC, 20 px, seed 0), ordered by (inliers, ASMK score).

The codebook is smaller than the deep methods' (4,096 words): user collections are often small and the size
is clipped to the training sample anyway. Ratio 0.9 and USAC_FAST were measured on mini-ROxf/RPar
(``benchmarks/RESULTS.md``).
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
                             max_hamming=40, verify_min_inliers=12),
        training="none",
        needs_weights=False,
        default=True,
    ),
)
