"""ViTGaL: ViT-based global and local features (Phan et al., ACCV 2022), with its local-feature autoencoder.

Model (paper sec. 3, Fig. 2): XCiT-S12/16 or S24/16 trunk (:mod:`glocal.models.layers.xcit`) -> tokens
reshaped to (C, h, w) -> multi-atrous block (:class:`VitgalMultiAtrous`) -> a CLS token and one
class-attention layer (:mod:`glocal.models.layers.class_attention`) -> layer norm. The CLS token is the
global feature (C = 384), the patch tokens are the local features. Training: ArcFace (eq. 1-2) with
m = 0.1, gamma = 30 (kept fixed here; the paper calls it learnable) on the global feature.

Autoencoder (sec. 3.1, Fig. 3, eq. 3-4): L = E(S) (linear C -> 128, the local descriptors), S' = D(L)
(linear 128 -> C), its own CLS token + class-attention layer + layer norm on S' give f_r, classified by a
linear layer with bias. Loss L_a = CE(f_r) + lambda * mean |S - S'|^2 with lambda = 10; the ViTGaL model
is frozen (no gradient, eval mode). The autoencoder's head-averaged CLS attention scores the keypoints.

Extraction (sec. 4.1): max side 1024; global feature at scale 1 only; local features over the 5 scales
(0.3535, 0.5, 0.7071, 1, 1.4142); the 1,000 highest scores over all scales (threshold: the paper uses
the median training score, unknown here, so 0 by default). Scores are the head-averaged attention times
the number of patches of the level (uniform attention = 1 at every scale), so levels compare. Keypoint =
centre of the token's 16 x 16 patch (sec. 3.1); levels are zero-padded at the bottom / right to a
multiple of 16, so a border patch's centre is the centre of its part inside the image.

Checkpoints (ours and the ViTGaL release's): :mod:`glocal.models.vitgal_checkpoints`. The extractor's
settings: :class:`glocal.models.configs.VitgalConfig` (torch-free; importable from here too).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glocal.models import backbones
from glocal.models.backbones.catalog import STRIDE16
from glocal.models.configs import RANDOM_WEIGHTS, VitgalConfig, backbone_weights_source
from glocal.models.extractor_base import GlobalLocalExtractor
from glocal.models.geometry.pyramid import PyramidLevel, SelectedFeatures
from glocal.models.geometry.receptive_field import feature_centers_xy, receptive_field
from glocal.models.layers.arcface import ArcFace
from glocal.models.layers.class_attention import ClassAttentionBlock, ClassAttentionOutput
from glocal.models.layers.xcit import Mlp, Xcit, XcitConfig, init_transformer_weights, load_xcit_weights, xcit_preset
from glocal.models.vitgal_checkpoints import convert_vitgal_release as convert_vitgal_release  # re-exported
from glocal.models.vitgal_checkpoints import load_vitgal_checkpoint


@dataclass(frozen=True)
class VitgalModelConfig:
    """Architecture and training settings of :class:`Vitgal`.

    :param variant: ``"s12"`` or ``"s24"`` (XCiT preset); ``xcit`` overrides it (tests use tiny dims).
    :param dilation_rates: the five multi-atrous dilations (ViTGaL release: 1, 3, 6, 9, 12).
    :param local_dim: autoencoder code size (128).
    :param num_classes: > 0 adds the ArcFace head and the autoencoder classifier.
    :param cls_as_key: the CLS token is also a key of the class attention (the release), see
        :mod:`glocal.models.layers.class_attention`.
    """

    variant: str = "s12"
    xcit: XcitConfig | None = None
    dilation_rates: tuple[int, ...] = (1, 3, 6, 9, 12)
    mlp_ratio: float = 4.0
    local_dim: int = 128
    num_classes: int = 0
    arcface_margin: float = 0.1
    arcface_scale: float = 30.0
    reconstruction_loss_weight: float = 10.0
    cls_as_key: bool = True
    backbone: str = "xcit"
    backbone_weights: str | None = None

    def xcit_config(self) -> XcitConfig:
        return self.xcit if self.xcit is not None else xcit_preset(self.variant)

    @classmethod
    def from_extractor(cls, config: VitgalConfig) -> VitgalModelConfig:
        """The architecture an extractor config asks for: the XCiT preset with ``embed_dim`` / ``depth`` /
        ``num_heads`` overridden where set."""
        overrides = {k: v for k, v in (("embed_dim", config.embed_dim), ("depth", config.depth),
                                       ("num_heads", config.num_heads)) if v is not None}
        xcit = replace(xcit_preset(config.variant), **overrides) if overrides else None
        weights = RANDOM_WEIGHTS if config.checkpoint else config.backbone_weights
        return cls(variant=config.variant, xcit=xcit, local_dim=config.local_dim, backbone=config.backbone,
                   backbone_weights=weights if config.backbone != "xcit" else None)


class VitgalMultiAtrous(nn.Module):
    """ViTGaL multi-atrous block on tokens (sec. 3, Fig. 2), layer names as in the ViTGaL release.

    Five 3x3 convolutions with the given dilations, C // 6 channels each, and a global-average-pool branch
    (1x1 conv to the remaining C - 5 (C // 6) channels, GELU, broadcast); concat -> GELU -> batch norm ->
    depthwise 3x3; ``x + g1 * that``; then ``x + g2 * MLP(LN(x))``.
    """

    def __init__(self, dim: int, rates: Sequence[int], mlp_ratio: float, layer_scale: float) -> None:
        super().__init__()
        if len(rates) != 5:
            raise ValueError(f"vitgal.py: the multi-atrous block has 5 dilated branches, got rates {tuple(rates)}")
        branch = dim // 6
        self.dilated_convs = nn.ModuleList(nn.Conv2d(dim, branch, 3, padding=r, dilation=r) for r in rates)
        self.gap_branch = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, dim - 5 * branch, 1), nn.GELU())
        self.act = nn.GELU()
        self.norm = nn.BatchNorm2d(dim)
        self.depthwise = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale)))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale)))

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, n, c = x.shape
        fmap = x.transpose(1, 2).reshape(b, c, h, w)
        branches = [conv(fmap) for conv in self.dilated_convs]
        branches.append(self.gap_branch(fmap).expand(-1, -1, h, w))
        y = self.depthwise(self.norm(self.act(torch.cat(branches, dim=1))))
        x = x + self.gamma * y.reshape(b, c, n).transpose(1, 2)
        return x + self.gamma2 * self.mlp(self.norm2(x))


class VitgalAutoencoder(nn.Module):
    """Local-feature autoencoder with its own class attention (ViTGaL sec. 3.1, Fig. 3)."""

    def __init__(self, dim: int, code_dim: int, num_heads: int, mlp_ratio: float, layer_scale: float,
                 num_classes: int, cls_as_key: bool) -> None:
        super().__init__()
        self.encoder = nn.Linear(dim, code_dim)
        self.decoder = nn.Linear(code_dim, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.class_attention = ClassAttentionBlock(dim, num_heads, mlp_ratio, layer_scale, cls_as_key)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.classifier = nn.Linear(dim, num_classes) if num_classes > 0 else None
        init_transformer_weights(self)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, local: Tensor) -> tuple[Tensor, Tensor, ClassAttentionOutput]:
        """local S (B, N, C) -> (L = E(S) (B, N, d), S' = D(L) (B, N, C), class attention on S')."""
        code = self.encoder(local)
        recon = self.decoder(code)
        out = self.class_attention(torch.cat((self.cls_token.expand(recon.shape[0], -1, -1), recon), dim=1))
        return code, recon, ClassAttentionOutput(self.norm(out.tokens), out.attention)


@dataclass
class VitgalFeatures:
    """Raw outputs: ``cls`` (B, C) and ``local`` (B, N, C) after the final norm, class-attention scores
    (B, heads, N), token grid (h, w)."""

    cls: Tensor
    local: Tensor
    attention: Tensor
    grid: tuple[int, int]


@dataclass
class VitgalOutput:
    """Inference outputs; ``None`` for what was not asked.

    :param global_descriptor: (B, C) L2-normalised.
    :param attention: (B, h, w) autoencoder keypoint scores (head mean x number of patches).
    :param local_descriptors: (B, h, w, local_dim) L2-normalised autoencoder codes.
    """

    global_descriptor: Tensor | None = None
    attention: Tensor | None = None
    local_descriptors: Tensor | None = None


class Vitgal(nn.Module):
    """ViTGaL network plus its autoencoder (one module, one checkpoint)."""

    checkpoint_family = "vitgal"

    def __init__(self, config: VitgalModelConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or VitgalModelConfig()
        xc = config.xcit_config()
        dim, eta = xc.embed_dim, xc.layer_scale
        self.cnn = config.backbone != "xcit"
        self.backbone: nn.Module
        if self.cnn:  # a CNN's stride-16 map as the tokens (XCiT's patches are 16 px too); heads sized to it
            self.backbone = backbones.build(config.backbone, config.backbone_weights, last_stage=STRIDE16)
            dim = self.backbone.channels[STRIDE16]
        else:
            self.backbone = Xcit(xc)
        self.multi_atrous = VitgalMultiAtrous(dim, config.dilation_rates, config.mlp_ratio, eta)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.class_attention = ClassAttentionBlock(dim, xc.num_heads, config.mlp_ratio, eta, config.cls_as_key)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        init_transformer_weights(self.multi_atrous)
        init_transformer_weights(self.class_attention)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.arcface = (ArcFace(dim, config.num_classes, config.arcface_margin, config.arcface_scale)
                        if config.num_classes > 0 else None)
        self.autoencoder = VitgalAutoencoder(dim, config.local_dim, xc.num_heads, config.mlp_ratio, eta,
                                             config.num_classes, config.cls_as_key)

    def features(self, x: Tensor) -> VitgalFeatures:
        """ViTGaL forward (Fig. 2) of a (B, 3, H, W) batch."""
        if self.cnn:
            fmap = self.backbone(x, (STRIDE16,))[STRIDE16]
            h, w = fmap.shape[-2], fmap.shape[-1]
            tokens = fmap.flatten(2).transpose(1, 2)
        else:
            tokens, (h, w) = self.backbone(x)
        tokens = self.multi_atrous(tokens, h, w)
        out = self.class_attention(torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1))
        z = self.norm(out.tokens)
        return VitgalFeatures(z[:, 0], z[:, 1:], out.attention, (h, w))

    def forward(self, x: Tensor, with_global: bool = True, with_local: bool = True) -> VitgalOutput:
        """Inference; see :class:`VitgalOutput`."""
        feats = self.features(x)
        out = VitgalOutput()
        if with_global:
            out.global_descriptor = F.normalize(feats.cls.float(), dim=1)
        if with_local:
            (h, w), b = feats.grid, x.shape[0]
            code, _, ae = self.autoencoder(feats.local)
            out.attention = (ae.scores() * (h * w)).float().reshape(b, h, w)
            out.local_descriptors = F.normalize(code.float(), dim=-1).reshape(b, h, w, -1)
        return out

    def _need_classes(self) -> None:
        if self.config.num_classes <= 0:
            raise ValueError("vitgal.py: training losses need a model built with num_classes > 0")

    def losses(self, x: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """ViTGaL training loss (eq. 1-2): ArcFace cross-entropy on the global feature."""
        self._need_classes()
        assert self.arcface is not None
        return {"global": self.arcface.loss(self.features(x).cls, labels)}

    def frozen_modules(self) -> list[nn.Module]:
        """Everything but the autoencoder (frozen while the autoencoder trains)."""
        return [m for name, m in self.named_children() if name != "autoencoder"]

    @contextlib.contextmanager
    def _frozen(self) -> Iterator[None]:
        modes = [(m, m.training) for m in self.frozen_modules()]
        for m, _ in modes:
            m.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            for m, mode in modes:
                m.train(mode)

    def autoencoder_losses(self, x: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Autoencoder losses (sec. 3.2, eq. 3-4): ``classification`` CE(f_r), ``reconstruction`` (MSE,
        unweighted) and ``total`` = CE + lambda MSE; the ViTGaL part runs frozen (no grad, eval mode)."""
        self._need_classes()
        with self._frozen():
            local = self.features(x).local
        _, recon, ae = self.autoencoder(local.detach())
        assert self.autoencoder.classifier is not None
        ce = F.cross_entropy(self.autoencoder.classifier(ae.cls), labels)
        mse = F.mse_loss(recon, local)
        return {"classification": ce, "reconstruction": mse,
                "total": ce + self.config.reconstruction_loss_weight * mse}


# -- extractor -------------------------------------------------------------------------------------------
def patch_centers_xy(grid: tuple[int, int], size: tuple[int, int], patch: int = 16) -> npt.NDArray[np.float64]:
    """(h * w, 2) (x, y) centres, row-major, of the patches of a (height, width) = ``size`` image
    (pixel-index coordinates: a full patch over pixels 16 j .. 16 j + 15 has centre 16 j + 7.5); border
    patches cut by the bottom / right padding are centred on their part inside the image."""
    def axis(n: int, length: int) -> npt.NDArray[np.float64]:
        start = patch * np.arange(n, dtype=np.float64)
        return (start + np.minimum(start + patch, length) - 1.0) / 2.0

    xs, ys = axis(grid[1], size[1]), axis(grid[0], size[0])
    return np.stack(np.meshgrid(xs, ys, indexing="xy"), axis=-1).reshape(-1, 2)


class VitgalExtractor(GlobalLocalExtractor):
    """ViTGaL global + local features of one image (or a batch of images)."""

    name = "vitgal"
    label = "ViTGaL"
    config: VitgalConfig
    model: Vitgal

    def __init__(self, config: VitgalConfig | None = None) -> None:
        self.config = config = config or VitgalConfig()
        self.descriptor_dim = config.local_dim
        self._setup(lambda: Vitgal(VitgalModelConfig.from_extractor(config)), quiet_build=False, channels_last=False)

    def _load_checkpoint(self, path: str) -> None:
        load_vitgal_checkpoint(self.model, path)

    def _random_init(self) -> str:
        if self.config.backbone != "xcit":
            source = backbone_weights_source(self.config.backbone, self.config.backbone_weights)
            return (f"only the {self.config.backbone} trunk is pretrained ({source}); multi-atrous, class attention "
                    "and autoencoder use RANDOM weights") if source else "the whole network uses RANDOM weights"
        if self.config.backbone_weights and self.config.backbone_weights != RANDOM_WEIGHTS:
            load_xcit_weights(self.model.backbone, self.config.backbone_weights)
            return (f"only the XCiT trunk is pretrained ({self.config.backbone_weights}); multi-atrous, class "
                    "attention and autoencoder use RANDOM weights")
        return "the whole network uses RANDOM weights"

    def _centres(self, level: PyramidLevel, h: int, w: int) -> tuple[npt.NDArray[np.float64], float]:
        """Patch centres, the cell being the 16-pixel patch; with a CNN backbone the receptive-field centres of
        its stride-16 map (as DELG's)."""
        if self.config.backbone == "xcit":
            return patch_centers_xy((h, w), level.size), 16.0
        path = self.model.backbone.path_to(STRIDE16)
        rf_y, rf_x = receptive_field(path, 0, level.size[0]), receptive_field(path, 1, level.size[1])
        return feature_centers_xy(rf_y, rf_x, h, w), rf_y.stride

    def _descriptors(self, sel: SelectedFeatures) -> np.ndarray:
        desc = sel.descriptors if len(sel.descriptors) else np.zeros((0, self.descriptor_dim), np.float32)
        return desc.astype(np.float32)
