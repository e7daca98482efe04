"""``fire`` (Weinzaepfel et al., ICLR 2022): Super-features from the Local feature Integration Transformer
(LIT, iterative attention of N templates over the R50- map, eq. 1-3), whitened to 128-D, searched with
ASMK* like HOW."""
from __future__ import annotations

from glocal.methods.spec import MethodSpec, PublishedWeights, lazy_extractor
from glocal.methods.stages import AsmkIndexOptions, RerankOptions
from glocal.models.configs import FireConfig

_BASE = "http://download.europe.naverlabs.com/ComputerVision/FIRe"


_build = lazy_extractor("glocal.models.fire", "FireExtractor")


SPECS = (
    MethodSpec(
        name="fire",
        summary="FIRe Super-features (LIT on R50-) -> ASMK*",
        paper="Weinzaepfel et al., Learning Super-Features for image retrieval, ICLR 2022",
        extractor=FireConfig(),
        build_extractor=_build,
        index=AsmkIndexOptions(),
        rerank=RerankOptions(rerank_top=0),
        weights=(PublishedWeights("fire", f"{_BASE}/official/fire.pth", "fire.pth",
                                  "FIRe, ResNet-50 without its last block + LIT, trained on SfM-120k "
                                  "(ICLR 2022)"),),
        training="tuples-superfeatures",
        extras=("deep",),
        capabilities=frozenset({"whitening", "attention"}),
    ),
)
