"""``dolg`` (Yang et al., ICCV 2021): local and global branches of one ResNet fused orthogonally (the local
feature's component orthogonal to the global one, eq. 3-4) into a single global descriptor; one stage."""
from __future__ import annotations

from glocal.methods.spec import MethodSpec, lazy_extractor
from glocal.methods.stages import GlobalIndexOptions, RerankOptions
from glocal.models.configs import DolgConfig

_build = lazy_extractor("glocal.models.dolg", "DolgExtractor")


SPECS = (
    MethodSpec(
        name="dolg",
        summary="global descriptor from orthogonal local/global fusion; no re-ranking",
        paper="Yang et al., DOLG: single-stage image retrieval with deep orthogonal fusion, ICCV 2021",
        extractor=DolgConfig(),
        build_extractor=_build,
        index=GlobalIndexOptions(),
        rerank=RerankOptions(rerank_top=0),
        training="classification",
        extras=("deep",),
    ),
)
