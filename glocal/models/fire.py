"""FIRe Super-features (Weinzaepfel, Lucas, Larlus & Kalantidis, "Learning Super-Features for Image
Retrieval", ICLR 2022).

Model: R50- trunk (res4, 1024-D) -> LIT (:mod:`glocal.models.layers.lit`, eq. 3-5: N = 256 templates,
T = 6 iterations, d = 1024) -> N raw Super-features s^_n -> eq. 6: s_n = o(s^_n) / ||o(s^_n)|| with the
frozen PCA-whitening o(.) to 128-D. The strength of a Super-feature is ||s^_n|| (the L2 norm of the raw
LIT output, as in the reference code), used to keep the top 1,000 over the 7 test scales (at most
256 per scale). Training: L_super (eq. 7-8) + L_attn (eq. 9) in :mod:`glocal.train.fire_losses`.

Keypoints: a Super-feature is not tied to one location; its keypoint is the **attention-weighted
centroid** of its final attention map, sum_l alpha_ln c_l, with c_l the receptive-field centre of
location l (eq. 4 makes every map sum to 1 over locations), mapped to original-image pixels. Its
scale, like HOW's, is the size of one res4 cell (16 px at level scale 1) in original pixels. The
extractor's settings: :class:`glocal.models.configs.FireConfig` (torch-free; importable from here too).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch.nn.functional as F
from torch import Tensor, nn

from glocal.io.images import LoadedImage
from glocal.models.backbones.catalog import STRIDE16
from glocal.models.configs import FireConfig
from glocal.models.extractor_base import seeded_init
from glocal.models.geometry.pyramid import PyramidLevel
from glocal.models.how import PyramidExtractor, build_trunk, config_trunk, descriptor_outputs, trunk_forward
from glocal.models.layers.lit import LitConfig, LocalFeatureIntegrationTransformer
from glocal.models.layers.whitening import PCAWhitening


@dataclass(frozen=True)
class SuperFeatures:
    """FIRe outputs for a batch.

    :param raw: (B, N, d) LIT outputs Phi(U) (input of o(.)).
    :param descriptors: (B, N, k) Super-features of eq. 6 (whitened, L2-normalised).
    :param whitened: (B, N, k) o(raw), not normalised.
    :param strengths: (B, N) ||raw||.
    :param attention: (B, N, h, w) final attention maps (eq. 4, each sums to 1 over h x w).
    """

    raw: Tensor
    descriptors: Tensor
    whitened: Tensor
    strengths: Tensor
    attention: Tensor


class FireNet(nn.Module):
    """Trunk + LIT + frozen whitening (module docstring). ``glocal train fire`` trains the trunk and the LIT
    (templates included); o(.) is made of buffers, fitted before training when it is not, and stays frozen.

    :param trunk: (B, 3, H, W) -> (B, lit.input_dim, H/16, W/16); :func:`glocal.models.how.build_trunk`
        by default.
    :param lit: LIT hyper-parameters.
    :param output_dim: k of o(.).
    """

    checkpoint_family = "fire"  #: the family glocal train's export writes (``glocal/fire/N``)

    def __init__(self, trunk: nn.Module | None = None, lit: LitConfig | None = None, output_dim: int = 128) -> None:
        super().__init__()
        lit = lit or LitConfig()
        self.backbone = trunk if trunk is not None else build_trunk()
        self.lit = LocalFeatureIntegrationTransformer(lit)
        self.whiten = PCAWhitening(lit.dim, output_dim)
        self.trunk_bf16 = False  # set by the extractor for runtime="torch-bf16" (see trunk_forward)

    def super_features(self, x: Tensor) -> SuperFeatures:
        """Super-features of a batch of images (FIRe eq. 3-6)."""
        out = self.lit(trunk_forward(self.backbone, x, self.trunk_bf16))
        whitened = self.whiten(out.features)
        strengths = (out.features.pow(2).sum(-1) + 1e-10).sqrt()
        return SuperFeatures(out.features, F.normalize(whitened, dim=-1), whitened, strengths, out.attention)

    def global_descriptor(self, x: Tensor) -> Tensor:
        """FIRe eq. 1 (HOW eq. 1) on the Super-features: normalise(sum_n ||s^_n|| o(s^_n)), (B, k); what the
        training mines hard negatives with (FIRe sec. 4, implementation details)."""
        sf = self.super_features(x)
        return F.normalize((sf.strengths.unsqueeze(-1) * sf.whitened).sum(1), dim=-1)

    forward = super_features


@dataclass(frozen=True)
class AttentionMaps:
    """Final LIT attention maps of one image at one scale, for visualisation.

    :param maps: (N, h, w) float32, each map sums to 1.
    :param strengths: (N,) ||s^_n||.
    :param keypoints: (N, 2) attention centroids (x, y) in original-image pixels.
    :param level_size: (height, width) of the pyramid level fed to the network.
    """

    maps: npt.NDArray[np.float32]
    strengths: npt.NDArray[np.float32]
    keypoints: npt.NDArray[np.float32]
    level_size: tuple[int, int]


class FireExtractor(PyramidExtractor):
    """FIRe Super-features through the extractor interface (``name``, ``max_side``, ``config``, ``extract``)."""

    name = "fire"
    method = "fire"
    #: ``glocal train fire`` defaults (FIRe sec. 4, implementation details; naver/fire train_fire.yml): Adam, lr
    #: 3e-5, weight decay 1e-4, Super-feature margin mu' 1.1 (weights 0.02 L_super, 0.1 L_attn), images at 1,024 px,
    #: batches of 5 tuples of 1 query, 1 positive and 5 hard negatives, 400 batches (2,000 queries) per epoch, pool
    #: of 20,000 images, the learning rate x0.99 per epoch (0.99 ** (1 / 400) per step), random flipping (each
    #: training image mirrored with probability 0.5)
    training_defaults = {"lr": 3e-5, "weight_decay": 1e-4, "margin": 1.1, "image_size": 1024, "batch": 5,
                         "negatives": 5, "queries_per_epoch": 2000, "pool_size": 20000, "lr_gamma": 0.99 ** (1 / 400),
                         "flip_prob": 0.5}

    def __init__(self, config: FireConfig | None = None, trunk: nn.Module | None = None, feature_dim: int = 1024) -> None:
        """:param trunk: replaces the config's trunk (tests, experiments); it must output ``feature_dim`` channels
            (without it, the LIT's input dimension is the config backbone's stride-16 channels)."""
        config = config or FireConfig()
        with seeded_init(config.seed):
            if trunk is None:
                trunk = config_trunk(config)
                feature_dim = trunk.channels[STRIDE16]
            lit = LitConfig(num_templates=config.num_templates, iterations=config.iterations, input_dim=feature_dim,
                            dim=config.lit_dim)
            net = FireNet(trunk, lit, config.output_dim)
        super().__init__(config, net)
        self._load({"backbone": config.backbone, "depth": config.depth, "output_dim": config.output_dim,
                    "num_templates": config.num_templates, "iterations": config.iterations, "lit_dim": config.lit_dim})

    def _level_outputs(self, x: Tensor, level: PyramidLevel, raw: bool) -> dict[str, Tensor]:
        sf = self.net.super_features(x)
        out = descriptor_outputs(sf.whitened, sf.strengths, self.config.l2_normalize)
        if raw:
            out["descriptors"] = sf.raw
        centres = self.centres((int(sf.attention.shape[-2]), int(sf.attention.shape[-1])), level.size)
        out["xy"] = sf.attention.flatten(2) @ centres  # attention-weighted centroids, level pixels
        out["attention"] = sf.attention
        return out

    def attention_maps(self, image: LoadedImage, scale: float = 1.0) -> AttentionMaps:
        """The N final attention maps of ``image`` at one pyramid ``scale`` (FIRe fig. 1 / fig. 10)."""
        level, out = self.run_levels(image, (scale,))[0]
        fy, fx = level.factor
        xy = out["xy"].numpy() / np.array([fx, fy]) / image.scale + np.asarray(image.offset)
        return AttentionMaps(out["attention"].numpy().astype(np.float32), out["strengths"].numpy().astype(np.float32),
                             xy.astype(np.float32), level.size)
