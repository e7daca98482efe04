"""DELG: unified deep local and global features (Cao, Araujo & Sim, ECCV 2020), and DELG* (binarised).

Model (paper sec. 3, and the TF2 release in ``tensorflow/models research/delf``):

* global: res5 -> GeM (p = 3, eq. 1 of DOLG / DELG sec. 3.1) -> FC "whitening" (2048 -> 2048, with bias)
  -> L2 normalisation; trained with ArcFace (m = 0.1, scale 45.25 = sqrt(2048), fixed) on the
  un-normalised whitened vector (DELG eq. 2).
* local, on res4 (1024 channels, stride 16; stride 32 with the TF release's ``block3_strides``), with the
  gradient stopped at res4 (DELG sec. 3.2: "no gradient from the local branch into the backbone"):
  attention ``A = softplus(conv_1x1(relu([bn](conv_1x1(S)))))`` (512 hidden channels; the TF release has a
  batch norm after the first convolution, the paper does not mention it: ``attention_batchnorm``),
  autoencoder ``L = conv_1x1(S)`` (1024 -> 128, the descriptors, L2-normalised at inference) and
  ``S' = relu(conv_1x1(L))`` (128 -> 1024).
* losses (DELG eq. 3-5): ArcFace cross-entropy on the global feature; attention cross-entropy on
  ``a = mean_h A_h * S'_h / |S'_h|`` through a linear classifier; reconstruction ``mean |S' - S|^2`` x 10.

Extraction (official DELG config): max side 1024; local features on 7 scales, global on the middle 3
(each L2-normalised, summed, re-normalised); local features with attention >= threshold (175 for the
GLDv1 model, 454.6 for GLDv2-clean), the 1,000 strongest over all scales; keypoint = receptive-field
centre, computed by walking the backbone (``glocal.models.geometry.receptive_field``). DELG* packs the sign bits
of the 128-D descriptors: ``np.packbits(d > 0)`` -> (N, 16) uint8. The extractor's settings:
:class:`glocal.models.configs.DelgConfig` (torch-free; importable from here too).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch.nn.functional as F
from torch import Tensor, nn

from glocal.models import backbones
from glocal.models.backbones.catalog import STRIDE16, STRIDE32
from glocal.models.configs import RANDOM_WEIGHTS, DelgConfig
from glocal.models.extractor_base import GlobalLocalExtractor
from glocal.models.geometry.pyramid import PyramidLevel, SelectedFeatures
from glocal.models.geometry.receptive_field import ReceptiveField, feature_centers_xy, receptive_field
from glocal.models.layers import ArcFace, GeM


@dataclass(frozen=True)
class DelgModelConfig:
    """Architecture and training settings of :class:`Delg` (defaults: the paper / TF release)."""

    backbone: str = "resnet50"
    depth: int = 50
    backbone_weights: str | None = None
    backbone_style: str = "torchvision"
    block3_strides: bool = False
    global_dim: int | None = None
    local_dim: int = 128
    attention_hidden: int = 512
    attention_batchnorm: bool = True
    gem_p: float = 3.0
    num_classes: int = 0
    arcface_margin: float = 0.1
    arcface_scale: float = 45.25
    attention_loss_weight: float = 1.0
    reconstruction_loss_weight: float = 10.0

    @classmethod
    def from_extractor(cls, config: DelgConfig) -> DelgModelConfig:
        """The architecture an extractor config asks for."""
        weights = RANDOM_WEIGHTS if config.checkpoint else config.backbone_weights  # the checkpoint replaces them
        return cls(backbone=config.backbone, depth=config.depth, backbone_weights=weights,
                   backbone_style=config.backbone_style, block3_strides=config.block3_strides,
                   attention_batchnorm=config.attention_batchnorm)

    @property
    def backbone_name(self) -> str:
        """The backbone built: ``backbone``, with ``depth`` choosing the ResNet."""
        return f"resnet{self.depth}" if self.backbone.startswith("resnet") else self.backbone


@dataclass
class DelgOutput:
    """Inference outputs; ``None`` for what was not asked.

    :param global_descriptor: (B, global_dim) L2-normalised.
    :param attention: (B, h, w) attention scores on the res4 grid.
    :param local_descriptors: (B, h, w, local_dim) L2-normalised.
    """

    global_descriptor: Tensor | None = None
    attention: Tensor | None = None
    local_descriptors: Tensor | None = None


class DelgAttention(nn.Module):
    """Attention scores ``softplus(conv(relu(bn(conv(S)))))`` (DELF / DELG attention module)."""

    def __init__(self, in_channels: int, hidden: int, batchnorm: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden, 1)
        self.bn: nn.Module = nn.BatchNorm2d(hidden, eps=1e-3) if batchnorm else nn.Identity()
        self.conv2 = nn.Conv2d(hidden, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.softplus(self.conv2(F.relu(self.bn(self.conv1(x)))))


class DelgAutoencoder(nn.Module):
    """1x1 encoder (descriptors) and 1x1 + ReLU decoder (reconstruction), DELG sec. 3.2."""

    def __init__(self, channels: int, dim: int) -> None:
        super().__init__()
        self.encoder = nn.Conv2d(channels, dim, 1)
        self.decoder = nn.Conv2d(dim, channels, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(reduced (B, dim, h, w), reconstructed (B, channels, h, w))."""
        reduced = self.encoder(x)
        return reduced, F.relu(self.decoder(reduced))


class Delg(nn.Module):
    """The DELG network: a backbone (:mod:`glocal.models.backbones`; ResNet in the paper), the global head on its
    stride-32 map, the attention and autoencoder local heads on its stride-16 map (their input channels are the
    backbone's; ``global_dim`` None: the stride-32 channels, 2048 for ResNet)."""

    checkpoint_family = "delg"
    optional_checkpoint_keys = ("gem.p",)  # fixed GeM power: absent from TF files

    def __init__(self, config: DelgModelConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DelgModelConfig()
        name = config.backbone_name
        resnet = dict(style=config.backbone_style, decimate_res4=config.block3_strides) if name.startswith("resnet") \
            else {}
        self.backbone = backbones.build(name, config.backbone_weights, **resnet)
        c4, c5 = self.backbone.channels[STRIDE16], self.backbone.channels[STRIDE32]
        self.global_dim = config.global_dim or c5
        self.gem = GeM(config.gem_p)
        self.whiten = nn.Linear(c5, self.global_dim)
        self.attention = DelgAttention(c4, config.attention_hidden, config.attention_batchnorm)
        self.autoencoder = DelgAutoencoder(c4, config.local_dim)
        if config.num_classes > 0:
            self.arcface = ArcFace(self.global_dim, config.num_classes, config.arcface_margin, config.arcface_scale)
            self.attention_classifier = nn.Linear(c4, config.num_classes)
        self._rf_cache: dict[tuple[int, int], tuple[ReceptiveField, ReceptiveField]] = {}

    def global_prelogits(self, res5: Tensor) -> Tensor:
        """Whitened GeM vector before normalisation (what ArcFace is trained on)."""
        return self.whiten(self.gem(res5))

    def local_heads(self, res4: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Attention (B, 1, h, w), reduced (B, d, h, w) and reconstructed (B, 1024, h, w) features.

        The input is detached: local losses never reach the backbone (DELG sec. 3.2).
        """
        res4 = res4.detach()
        reduced, reconstructed = self.autoencoder(res4)
        return self.attention(res4), reduced, reconstructed

    def forward(self, x: Tensor, with_global: bool = True, with_local: bool = True) -> DelgOutput:
        """Inference on a (B, 3, H, W) batch; see :class:`DelgOutput`."""
        stages = ([STRIDE16] if with_local else []) + ([STRIDE32] if with_global else [])
        if not stages:
            return DelgOutput()
        feats = self.backbone(x, stages)
        out = DelgOutput()
        if with_global:
            out.global_descriptor = F.normalize(self.global_prelogits(feats[STRIDE32]).float(), dim=1)
        if with_local:
            attention, reduced, _ = self.local_heads(feats[STRIDE16])
            out.attention = attention[:, 0].float()
            out.local_descriptors = F.normalize(reduced.float(), dim=1).permute(0, 2, 3, 1)
        return out

    def losses(self, x: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """DELG training losses (eq. 3-5) of a batch: see :meth:`losses_from_features`."""
        return self.losses_from_features(self.backbone(x, (STRIDE16, STRIDE32)), labels)

    def losses_from_features(self, feats: dict[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
        """Losses from backbone outputs ``{"res4", "res5"}`` (also usable on cached features):
        ``global`` (ArcFace CE), ``attention`` (CE), ``reconstruction`` (MSE, unweighted) and ``total`` =
        global + w_a attention + w_r reconstruction (w_a = 1, w_r = 10)."""
        if self.config.num_classes <= 0:
            raise ValueError("delg.py: losses need a model built with num_classes > 0")
        global_loss = self.arcface.loss(self.global_prelogits(feats[STRIDE32]), labels)
        attention, _, reconstructed = self.local_heads(feats[STRIDE16])
        pooled = (attention * F.normalize(reconstructed, dim=1)).mean(dim=(2, 3))
        attention_loss = F.cross_entropy(self.attention_classifier(pooled), labels)
        reconstruction_loss = F.mse_loss(reconstructed, feats[STRIDE16].detach())
        total = (global_loss + self.config.attention_loss_weight * attention_loss
                 + self.config.reconstruction_loss_weight * reconstruction_loss)
        return {"global": global_loss, "attention": attention_loss, "reconstruction": reconstruction_loss,
                "total": total}

    def receptive_fields(self, input_size: tuple[int, int]) -> tuple[ReceptiveField, ReceptiveField]:
        """(y, x) receptive fields of the local-feature grid for an input of ``input_size`` (h, w).

        Computed by walking the backbone up to res4 (the 1x1 heads do not change it).
        """
        key = (int(input_size[0]), int(input_size[1]))
        if key not in self._rf_cache:
            path = self.backbone.path_to(STRIDE16)
            self._rf_cache[key] = (receptive_field(path, 0, key[0]), receptive_field(path, 1, key[1]))
        return self._rf_cache[key]


class DelgExtractor(GlobalLocalExtractor):
    """DELG (or DELG* with ``binarize``) global + local features of one image at a time, or a batch."""

    label = "DELG"
    config: DelgConfig
    model: Delg

    def __init__(self, config: DelgConfig | None = None) -> None:
        self.config = config = config or DelgConfig()
        self.name = "delg-star" if config.binarize else "delg"
        self.descriptor_dim = 16 if config.binarize else 128
        self._setup(lambda: Delg(DelgModelConfig.from_extractor(config)))

    def _centres(self, level: PyramidLevel, h: int, w: int) -> tuple[npt.NDArray[np.float64], float]:
        """Receptive-field centres of the res4 cells; the cell is the grid stride (16 or 32 level pixels), so
        the record's ``scales`` are as for HOW / FIRe; DELF's own convention (1 / level scale) is them
        divided by the stride."""
        rf_y, rf_x = self.model.receptive_fields(level.size)
        return feature_centers_xy(rf_y, rf_x, h, w), rf_y.stride

    def _descriptors(self, sel: SelectedFeatures) -> np.ndarray:
        desc = np.packbits(sel.descriptors > 0, axis=1) if self.config.binarize else sel.descriptors
        if len(desc) == 0:
            desc = np.zeros((0, self.descriptor_dim), np.uint8 if self.config.binarize else np.float32)
        return desc
