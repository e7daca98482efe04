"""``gem`` (Radenovic et al., TPAMI 2019): GeM pooling of an ImageNet network's last convolutional map, off
the shelf (EfficientNet-Lite2, weights shipped by the ``pretrained`` extra; no checkpoint to download); one
global descriptor, one stage. Optionally PCA-whitened (Jegou & Chum, ECCV 2012; no labels) with a file learned
by ``glocal whiten --method gem`` and given as ``--set whitening=FILE``."""
from __future__ import annotations

from glocal.methods.spec import MethodSpec, lazy_extractor
from glocal.methods.stages import GlobalIndexOptions, RerankOptions
from glocal.models.configs import GemConfig

_build = lazy_extractor("glocal.models.gem", "GemExtractor")


SPECS = (
    MethodSpec(
        name="gem",
        summary="GeM-pooled ImageNet EfficientNet-Lite map as the global descriptor; no re-ranking",
        paper="Radenovic, Tolias & Chum, Fine-tuning CNN image retrieval with no human annotation, TPAMI 2019",
        extractor=GemConfig(),
        build_extractor=_build,
        index=GlobalIndexOptions(),
        rerank=RerankOptions(rerank_top=0),
        training="tuples",
        extras=("deep", "pretrained"),
        # the ImageNet weights come with the "pretrained" extra: nothing to download or pass
        needs_weights=False,
        # 'glocal whiten --method gem' learns the descriptor's PCA-whitening without labels (--set whitening=)
        capabilities=frozenset({"whitening"}),
    ),
)
