"""``delg`` and ``delg-star`` (Cao et al., ECCV 2020): one ResNet gives a GeM global descriptor (with
whitening) for the shortlist and attention-selected, autoencoded 128-D local features for re-ranking.

Re-ranking is the paper's (appendix): nearest neighbours under L2 distance 1.0, affine RANSAC with 1,000
trials at 20 px, fixed seed. ``delg-star`` (DELG*) binarises the local descriptors to 16-byte sign codes and
matches them under Hamming distance; the L2 threshold 1.1 becomes 1.1^2 * 128 / 4 = 38.72 bits
(two unit sign vectors differing in h bits are 2 sqrt(h / dim) apart).
"""
from __future__ import annotations

from glocal.methods.spec import MethodSpec, lazy_extractor
from glocal.methods.stages import GlobalIndexOptions, RerankOptions
from glocal.models.configs import DelgConfig

_DELG_RERANK = RerankOptions(rerank_top=100, max_distance=1.0, estimator="ransac", max_iters=1000,
                             threshold_px=20.0)
#: DELG*'s L2 threshold 1.1 on 128-D unit descriptors, in Hamming bits of their sign codes
_STAR_HAMMING = 1.1 ** 2 * 128 / 4


_build = lazy_extractor("glocal.models.delg", "DelgExtractor")


SPECS = (
    MethodSpec(
        name="delg",
        summary="global (GeM + whitening) shortlist, top 100 verified with DELG's local features",
        paper="Cao, Araujo & Sim, Unifying deep local and global features for image search, ECCV 2020",
        extractor=DelgConfig(),
        build_extractor=_build,
        index=GlobalIndexOptions(),
        rerank=_DELG_RERANK,
        training="classification",
        extras=("deep",),
    ),
    MethodSpec(
        name="delg-star",
        summary="DELG* : DELG with local descriptors binarised to 16 bytes (Hamming matching)",
        paper="Cao, Araujo & Sim, ECCV 2020 (DELG*, section 4.3)",
        extractor=DelgConfig(binarize=True),
        build_extractor=_build,
        fixed={"binarize": True},
        index=GlobalIndexOptions(),
        rerank=RerankOptions(**{**_DELG_RERANK.__dict__, "max_distance": _STAR_HAMMING}),
        training="classification",
        extras=("deep",),
    ),
)
