"""``vitgal``: an XCiT transformer with multi-atrous convolutions and class attention gives a global
descriptor (the class token) for the shortlist and autoencoded patch features re-ranked as in DELG
(section 4: L2 distance 1.0, affine RANSAC, 1,000 trials, 20 px)."""
from __future__ import annotations

from glocal.methods.spec import MethodSpec, lazy_extractor
from glocal.methods.stages import GlobalIndexOptions, RerankOptions
from glocal.models.configs import VitgalConfig

_build = lazy_extractor("glocal.models.vitgal", "VitgalExtractor")


SPECS = (
    MethodSpec(
        name="vitgal",
        summary="XCiT class token shortlist, top 100 verified with autoencoded patch features",
        paper="ViTGaL: vision transformer with global and local features for image retrieval",
        extractor=VitgalConfig(),
        build_extractor=_build,
        index=GlobalIndexOptions(),
        rerank=RerankOptions(rerank_top=100, max_distance=1.0, estimator="ransac", max_iters=1000,
                             threshold_px=20.0),
        training="classification",
        extras=("deep",),
    ),
)
