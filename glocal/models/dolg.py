"""DOLG: deep orthogonal fusion of local and global features (Yang et al., ICCV 2021).

Resolutions (paper sec. 3.1 and 3.3): DOLG's "Res3" output f_3 and "Res4" output f_4 are our ``res4``
(1024 channels, stride 16) and ``res5`` (2048, stride 32): the local tensor f_l has C = 1024 channels
("typically C equals 1024 in ResNet") and f_g must have the same C for the projection of eq. 2, so

* local branch on res4 (stride 16): multi-atrous module (dilations 6, 12, 18 + image pooling, concat,
  1x1 conv; :mod:`glocal.models.layers.multi_atrous`) -> self-attention: 1x1 conv + BN, the result
  L2-normalised per location and multiplied by ``softplus(conv_1x1(relu(.)))`` -> f_l (B, 1024, h, w);
* global branch on res5: GeM (p = 3, eq. 1) -> FC 2048 -> 1024 -> f_g (B, 1024), at the same C as f_l;
* orthogonal fusion (eq. 2-5) at every location of the res4 grid:
  ``f_orth = f_l - (f_l . f_g / |f_g|^2) f_g``, pooled (average, "A" in Fig. 4a), concatenated *after*
  f_g ([f_g, pool(f_orth)], the port's order) -> FC 2048 -> 512 -> the descriptor (L2-normalised);
* training: ArcFace (eq. 6-7), m = 0.15, gamma = 30, on the 512-D descriptor.

Ablations (Tables 3-6): ``fusion`` = orthogonal | concat (pool(f_l)) | hadamard (pool(f_l * f_g)),
``global_pooling`` / ``fusion_pooling`` = gem | avg, ``multi_atrous`` on / off. Extraction: 5 scales
(0.3535 .. 1.4142), each descriptor L2-normalised, averaged, L2-normalised; DOLG has no local features. The extractor's
settings: :class:`glocal.models.configs.DolgConfig` (torch-free; importable from here too).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glocal.io.images import LoadedImage
from glocal.models import backbones
from glocal.models.backbones.catalog import STRIDE16, STRIDE32
from glocal.models.configs import FUSIONS, POOLINGS, RANDOM_WEIGHTS, DolgConfig
from glocal.models.extractor_base import ModelExtractor
from glocal.models.geometry.pyramid import PyramidLevel, fuse_global
from glocal.models.layers import ArcFace, GeM, MultiAtrous, average_pool
from glocal.records import ImageFeatures


@dataclass(frozen=True)
class DolgModelConfig:
    """Architecture and training settings of :class:`Dolg` (defaults: the paper)."""

    backbone: str = "resnet50"
    depth: int = 50
    backbone_weights: str | None = None
    backbone_style: str = "torchvision"
    local_dim: int | None = None
    output_dim: int = 512
    multi_atrous: bool = True
    atrous_rates: tuple[int, ...] = (6, 12, 18)
    atrous_channels: int | None = None
    atrous_pointwise_branch: bool = False
    fusion: str = "orthogonal"
    global_pooling: str = "gem"
    fusion_pooling: str = "avg"
    gem_p: float = 3.0
    num_classes: int = 0
    arcface_margin: float = 0.15
    arcface_scale: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "atrous_rates", tuple(int(r) for r in self.atrous_rates))
        if self.fusion not in FUSIONS:
            raise ValueError(f"dolg.py: fusion must be one of {FUSIONS}, got {self.fusion!r}")
        for what in ("global_pooling", "fusion_pooling"):
            if getattr(self, what) not in POOLINGS:
                raise ValueError(f"dolg.py: {what} must be one of {POOLINGS}, got {getattr(self, what)!r}")

    @classmethod
    def from_extractor(cls, config: DolgConfig) -> DolgModelConfig:
        """The architecture an extractor config asks for."""
        weights = RANDOM_WEIGHTS if config.checkpoint else config.backbone_weights  # the checkpoint replaces them
        return cls(backbone=config.backbone, depth=config.depth, backbone_weights=weights,
                   backbone_style=config.backbone_style, multi_atrous=config.multi_atrous, atrous_pointwise_branch=config.atrous_pointwise_branch,
                   fusion=config.fusion, global_pooling=config.global_pooling, fusion_pooling=config.fusion_pooling)

    @property
    def backbone_name(self) -> str:
        """The backbone built: ``backbone``, with ``depth`` choosing the ResNet."""
        return f"resnet{self.depth}" if self.backbone.startswith("resnet") else self.backbone


def orthogonal_component(f_l: Tensor, f_g: Tensor, eps: float = 1e-12) -> Tensor:
    """DOLG eq. 2-5: remove from every local vector f_l[:, :, i, j] its projection on f_g.

    :param f_l: (B, C, H, W) local features.
    :param f_g: (B, C) global feature.
    :returns: (B, C, H, W) with ``f_orth . f_g = 0`` at every location.
    """
    g = f_g[:, :, None, None]
    coeff = (f_l * g).sum(dim=1, keepdim=True) / (f_g * f_g).sum(dim=1).clamp(min=eps)[:, None, None, None]
    return f_l - coeff * g


class Dolg(nn.Module):
    """The DOLG network; ``forward`` gives the L2-normalised descriptor, ``fusion_parts`` the pieces.

    Any backbone of :mod:`glocal.models.backbones` (ResNet in the paper): the local branch on its stride-16 map
    (C = ``local_dim``, None: the map's channels, 1024 for ResNet as in the paper; multi-atrous branches of
    ``atrous_channels``, None: C / 2), the global branch on its stride-32 map."""

    checkpoint_family = "dolg"
    optional_checkpoint_keys = ("global_pool.p",)  # fixed GeM power: absent from some port files

    def __init__(self, config: DolgModelConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DolgModelConfig()
        name = config.backbone_name
        resnet = dict(style=config.backbone_style) if name.startswith("resnet") else {}
        self.backbone = backbones.build(name, config.backbone_weights, **resnet)
        c4, c5 = self.backbone.channels[STRIDE16], self.backbone.channels[STRIDE32]
        c = config.local_dim or c4
        self.multi_atrous: nn.Module = (
            MultiAtrous(c4, c4, config.atrous_channels or c4 // 2, config.atrous_rates, config.atrous_pointwise_branch)
            if config.multi_atrous else nn.Identity()
        )
        self.local_conv = nn.Conv2d(c4, c, 1)
        self.local_bn = nn.BatchNorm2d(c)
        self.attention_conv = nn.Conv2d(c, 1, 1)
        self.global_pool = GeM(config.gem_p)
        self.global_fc = nn.Linear(c5, c)
        self.fusion_fc = nn.Linear(2 * c, config.output_dim)
        if config.num_classes > 0:
            self.arcface = ArcFace(config.output_dim, config.num_classes, config.arcface_margin, config.arcface_scale)

    def local_features(self, res4: Tensor) -> tuple[Tensor, Tensor]:
        """Local branch (sec. 3.2): (f_l (B, C, h, w), attention (B, 1, h, w))."""
        x = self.local_bn(self.local_conv(self.multi_atrous(res4)))
        attention = F.softplus(self.attention_conv(F.relu(x)))
        return attention * F.normalize(x, dim=1), attention

    def global_feature(self, res5: Tensor) -> Tensor:
        """Global branch (sec. 3.1, eq. 1): f_g (B, C)."""
        pooled = self.global_pool(res5) if self.config.global_pooling == "gem" else average_pool(res5)
        return self.global_fc(pooled)

    def fusion_parts(self, x: Tensor) -> dict[str, Tensor]:
        """Intermediate tensors of a batch: see :meth:`fusion_parts_from_features`."""
        return self.fusion_parts_from_features(self.backbone(x, (STRIDE16, STRIDE32)))

    def fusion_parts_from_features(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        """From backbone outputs ``{"res4", "res5"}``: ``f_l``, ``f_g``, ``fused_local`` (the map that is
        pooled; f_orth for orthogonal fusion) and ``embedding`` (the descriptor before normalisation)."""
        f_l, _ = self.local_features(feats[STRIDE16])
        f_g = self.global_feature(feats[STRIDE32])
        if self.config.fusion == "orthogonal":
            fused = orthogonal_component(f_l, f_g)
        elif self.config.fusion == "hadamard":
            fused = f_l * f_g[:, :, None, None]
        else:
            fused = f_l
        pooled = self.global_pool(fused) if self.config.fusion_pooling == "gem" else average_pool(fused)
        embedding = self.fusion_fc(torch.cat([f_g, pooled], dim=1))
        return {"f_l": f_l, "f_g": f_g, "fused_local": fused, "embedding": embedding}

    def forward(self, x: Tensor) -> Tensor:
        """(B, output_dim) L2-normalised descriptors of a (B, 3, H, W) batch."""
        return F.normalize(self.fusion_parts(x)["embedding"].float(), dim=1)

    def losses(self, x: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """ArcFace cross-entropy (eq. 6) of a batch: ``global`` and ``total`` (the same)."""
        return self.losses_from_features(self.backbone(x, (STRIDE16, STRIDE32)), labels)

    def losses_from_features(self, feats: dict[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
        """:meth:`losses` from backbone outputs ``{"res4", "res5"}`` (also usable on cached features)."""
        if self.config.num_classes <= 0:
            raise ValueError("dolg.py: losses need a model built with num_classes > 0")
        loss = self.arcface.loss(self.fusion_parts_from_features(feats)["embedding"], labels)
        return {"global": loss, "total": loss}


class DolgExtractor(ModelExtractor):
    """DOLG global descriptors (512-D); the records carry no local features."""

    name = "dolg"
    descriptor_dim = 0
    label = "DOLG"
    config: DolgConfig
    model: Dolg

    def __init__(self, config: DolgConfig | None = None) -> None:
        self.config = config = config or DolgConfig()
        self._setup(lambda: Dolg(DolgModelConfig.from_extractor(config)))

    @staticmethod
    def _outputs(model: nn.Module, x: Tensor, flags: tuple[bool, ...]) -> dict[str, Tensor]:
        return {"global_descriptor": model(x)}

    @torch.inference_mode()
    def extract_batch(self, images: Sequence[LoadedImage], names: Sequence[str]) -> list[ImageFeatures]:
        """Descriptors (1, 512) of several images, no local features; pyramid levels of equal size run as
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
