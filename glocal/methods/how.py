"""``how`` (Tolias et al., ECCV 2020): local activations of a ResNet-50 without its last block, selected by
their norm (attention), PCA-whitened to 128-D, searched with ASMK* (binary, alpha 3, tau 0, one word per
database descriptor, five per query descriptor, 65,536 words)."""
from __future__ import annotations

from glocal.methods.spec import MethodSpec, PublishedWeights, lazy_extractor
from glocal.methods.stages import AsmkIndexOptions, RerankOptions
from glocal.models.configs import HowConfig

_BASE = "http://ptak.felk.cvut.cz/personal/toliageo/share/how/models"


_build = lazy_extractor("glocal.models.how", "HowExtractor")


SPECS = (
    MethodSpec(
        name="how",
        summary="HOW local descriptors (R50-, whitened to 128-D) -> ASMK*",
        paper="Tolias, Jenicek & Chum, Learning and aggregating deep local descriptors, ECCV 2020",
        extractor=HowConfig(),
        build_extractor=_build,
        index=AsmkIndexOptions(),
        rerank=RerankOptions(rerank_top=0),
        weights=(PublishedWeights("how-r50", f"{_BASE}/how_r50-.pth", "how_r50-.pth",
                                  "HOW, ResNet-50 without its last block, trained on SfM-120k (ECCV 2020)"),),
        training="tuples",
        extras=("deep",),
        capabilities=frozenset({"whitening", "attention"}),
    ),
)
