"""``d2r``, Detect-to-Retrieve's regional search (Teichmann et al., CVPR 2019): each database image is
described by regions as well as by the whole image, and local descriptors are aggregated per region.

R-ASMK* (eq. 8-9) aggregates every region's descriptors with ASMK* and sums the per-word aggregates over
the image's regions into one image representation; ``aggregation=regions`` instead stores every region
and scores an image by its best region (eq. 3-4). The paper's regions come from a landmark detector
(``--set regions=detector --set detector=WEIGHTS``); the weight-free default here uses the R-MAC grid
(levels 1-3) instead. The local features are RootSIFT; the regional variants of ``how`` and ``fire`` are the
same options on those methods (``--set regions=rmac``).
"""
from __future__ import annotations

from glocal.methods.sift import SPECS as _SIFT
from glocal.methods.spec import MethodSpec
from glocal.methods.stages import AsmkIndexOptions

_BASE = _SIFT[0]

SPECS = (
    MethodSpec(
        name="d2r",
        summary="RootSIFT regions (R-MAC grid or detector) -> R-ASMK* -> verification of the top 100",
        paper="Teichmann et al., Detect-to-Retrieve: efficient regional aggregation, CVPR 2019",
        extractor=_BASE.extractor,
        build_extractor=_BASE.build_extractor,
        index=AsmkIndexOptions(codebook_size=4096, regions="rmac"),
        rerank=_BASE.rerank,
        training="detector",
        needs_weights=False,
    ),
)
