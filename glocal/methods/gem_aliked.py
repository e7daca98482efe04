"""``gem-aliked``: the seeds' two-stage design (DELG, Cao et al., ECCV 2020: a global descriptor shortlists,
local features verify) with learned parts that have real weights here. First stage: GeM (Radenovic et al.,
TPAMI 2019) of the package-shipped ImageNet EfficientNet-Lite2 (the ``gem`` method's descriptor), searched
exactly. Re-ranking: the top ``rerank_top`` verified with ALIKED keypoints and descriptors (Zhao et al., IEEE
TIM 2023; the ``aliked`` method's features at 640 px): mutual nearest neighbours + Lowe's ratio 0.9 (the
``aliked`` method's matching), affine USAC at 20 px, ordered by inliers.

The extractor composes the ``gem`` and ``aliked`` extractors (:mod:`glocal.models.gem_aliked`). ALIKED's
weights ship in no package: ``--checkpoint gem-aliked-n16`` downloads the release file (checked against its
sha256) or ``--set checkpoint=PATH`` names a local copy; without them the extractor refuses to start.
"""
from __future__ import annotations

from glocal.methods.aliked import release_weights
from glocal.methods.spec import MethodSpec, lazy_extractor
from glocal.methods.stages import GlobalIndexOptions, RerankOptions
from glocal.models.gem_aliked_config import GemAlikedConfig

_build = lazy_extractor("glocal.models.gem_aliked", "GemAlikedExtractor")

SPECS = (
    MethodSpec(
        name="gem-aliked",
        summary="GeM (ImageNet EfficientNet-Lite2) shortlist, top 100 verified with ALIKED local features",
        paper="Cao, Araujo & Sim, ECCV 2020 (global shortlist + local verification); Radenovic, Tolias & Chum, "
              "TPAMI 2019 (GeM); Zhao et al., ALIKED, IEEE TIM 2023",
        extractor=GemAlikedConfig(),
        build_extractor=_build,
        index=GlobalIndexOptions(),
        rerank=RerankOptions(rerank_top=100, ratio=0.9, mutual=True, estimator="usac_fast"),
        weights=release_weights("gem-aliked-"),
        training="external",
        extras=("deep", "pretrained"),
        needs_weights=True,
    ),
)
