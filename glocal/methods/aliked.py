"""``aliked``: ALIKED keypoints and 128-D SDDH descriptors (Zhao et al., IEEE TIM 2023; weights trained on
MegaDepth by the authors, BSD-3-Clause) -> ASMK* (4,096 words, as ``sift``) -> spatial verification of the top
100 (mutual nearest neighbours + Lowe's ratio 0.9, affine USAC, 20 px), the same re-ranking as ``sift``.

The weights are not in any package: ``--checkpoint aliked-n16`` downloads the release file (checked against
its sha256) or ``--set checkpoint=PATH`` names a local copy; ``variant`` must match the file (t16 files give
64-D descriptors). Without weights the extractor refuses to start (``random_weights=true`` is for plumbing
tests only).
"""
from __future__ import annotations

from glocal.methods.spec import MethodSpec, PublishedWeights, lazy_extractor
from glocal.methods.stages import AsmkIndexOptions, RerankOptions
from glocal.models.aliked_config import AlikedConfig

_build = lazy_extractor("glocal.models.aliked", "AlikedExtractor")

#: the authors' repository (github.com/Shiaoming/ALIKED, ``models/``); digests of the files at commit 683d7c6
_RELEASE = "https://github.com/Shiaoming/ALIKED/raw/main/models"
_FILES = {
    "t16": ("56782336919db220144a884e710e2b6af13b3b8f8da15b915a239078ab471085", "ALIKED-T(16), 64-D descriptors"),
    "n16": ("5be8704840ed662d9d8c561bf7279c222092674e7eb05fd0feab94899e9d82f2", "ALIKED-N(16), 128-D descriptors"),
    "n16rot": ("ddf3abbf38e86f6a74540d214e1a9712c54b2d8551abc864542199f2347d7332",
               "ALIKED-N(16) trained with rotation augmentation"),
    "n32": ("055283fd1624d3ab46a05c3b617b1a79a3f28d1f551737eef2d653e8c8232890",
            "ALIKED-N(32), 32 sampling positions per descriptor"),
}



def release_weights(prefix: str) -> tuple[PublishedWeights, ...]:
    """The release files as published weights named ``<prefix><variant>`` (a method using ALIKED publishes them
    under its own names: ``--checkpoint`` names belong to one method)."""
    return tuple(
        PublishedWeights(f"{prefix}{v}", f"{_RELEASE}/aliked-{v}.pth", f"aliked-{v}.pth",
                         f"{text}, trained on MegaDepth (authors' release, BSD-3-Clause); --set variant={v}", digest)
        for v, (digest, text) in _FILES.items())


SPECS = (
    MethodSpec(
        name="aliked",
        summary="ALIKED keypoints + SDDH descriptors -> ASMK* -> verification of the top 100",
        paper="Zhao et al., ALIKED: A Lighter Keypoint and Descriptor Extraction Network via Deformable "
              "Transformation, IEEE TIM 2023; Tolias et al., ICCV 2013 (ASMK*)",
        extractor=AlikedConfig(),
        build_extractor=_build,
        index=AsmkIndexOptions(codebook_size=4096),
        rerank=RerankOptions(rerank_top=100, ratio=0.9, mutual=True, estimator="usac_fast"),
        weights=release_weights("aliked-"),
        training="external",
        extras=("deep",),
        needs_weights=True,
    ),
)
