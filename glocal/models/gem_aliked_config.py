"""Settings of the ``gem-aliked`` extractor, importable without torch (the extractor:
:mod:`glocal.models.gem_aliked`).

One flat, typed config holding the two stages' settings: the GeM global descriptor
(:class:`~glocal.models.configs.GemConfig`'s fields) and the ALIKED local features
(:class:`~glocal.models.aliked_config.AlikedConfig`'s fields); :meth:`GemAlikedConfig.gem_config` and
:meth:`GemAlikedConfig.aliked_config` give each stage's own config, so each stage is built by its own extractor.
"""
from __future__ import annotations

from dataclasses import dataclass

from glocal.models.aliked_config import ALIKED_VARIANTS, AlikedConfig
from glocal.models.backbones.catalog import BACKBONE_NAMES
from glocal.models.configs import PREPROCESSING_CHOICES, TORCH_RUNTIMES, GemConfig, check_choices, option


@dataclass(frozen=True)
class GemAlikedConfig:
    """Settings of the ``gem-aliked`` extractor: a GeM global descriptor (Radenovic et al., TPAMI 2019) of an
    ImageNet EfficientNet-Lite for the shortlist, and ALIKED keypoints + SDDH descriptors (Zhao et al., IEEE TIM
    2023) for its verification. The image is loaded once at ``max_side`` (the GeM stage's input) and shrunk to
    ``local_max_side`` for ALIKED."""

    # -- loading (shared) --------------------------------------------------------------------------------
    max_side: int = option(1024, "images are loaded with their longest side at most this many pixels (the GeM "
                           "stage's input)")
    device: str = option("cpu", "torch device of both networks: cpu, cuda or cuda:i")
    seed: int = option(0, "seed of any random initialisation")
    # -- global stage: GeM -------------------------------------------------------------------------------
    backbone: str = option("efficientnet-lite2", "GeM stage: ImageNet trunk whose stride-32 map is pooled",
                           BACKBONE_NAMES)
    backbone_weights: str | None = option(None, "GeM stage: ImageNet weights of the trunk: a file, 'random', or "
                                          "None: the package's weights (pretrained extra)")
    gem_checkpoint: str | None = option(None, "GeM stage: glocal weights file of a fine-tuned trunk; None: the "
                                        "ImageNet weights")
    gem_p: float = option(3.0, "GeM stage: GeM power p (1: average pooling, large: max pooling)")
    scales: tuple[float, ...] = option((1.0,), "GeM stage: pyramid scales (L2-normalised descriptors summed)")
    whitening: str | None = option(None, "GeM stage: learned PCA-whitening file ('glocal whiten --method gem'); "
                                   "None: the raw GeM descriptor")
    preprocessing: str = option("auto", "GeM stage: pixel normalisation preset (auto: the backbone's)",
                                PREPROCESSING_CHOICES)
    runtime: str = option("torch", "GeM stage: torch (float32) or torch-bf16 (bfloat16 autocast)", TORCH_RUNTIMES)
    batch_size: int = option(4, "GeM stage: pyramid levels of equal size run through the network in one batch")
    # -- local stage: ALIKED -----------------------------------------------------------------------------
    checkpoint: str | None = option(
        None, "ALIKED stage: the release's aliked-<variant>.pth or a glocal file; required (--checkpoint "
        "gem-aliked-n16 downloads the BSD-3-Clause release)")
    variant: str = option("n16", "ALIKED stage: network of the checkpoint: t16, n16, n16rot or n32", ALIKED_VARIANTS)
    local_max_side: int = option(640, "ALIKED stage: the loaded image is shrunk to this longest side at most "
                                 "(never enlarged)")
    max_keypoints: int = option(2000, "ALIKED stage: keep the strongest keypoints, at most this many per image")
    score_threshold: float = option(0.2, "ALIKED stage: keep score-map maxima above this (the release's 0.2)")
    nms_radius: int = option(2, "ALIKED stage: non-maximum suppression radius in pixels")
    random_weights: bool = option(False, "ALIKED stage: run without a checkpoint on random weights (plumbing tests "
                                  "only: the local features are meaningless)")

    def __post_init__(self) -> None:
        check_choices(self, type(self).__name__)
        for name in ("checkpoint", "gem_checkpoint", "whitening", "backbone_weights"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, str(value) or None)
        if self.local_max_side < 32:
            raise ValueError(f"{type(self).__name__}: local_max_side must be >= 32, got {self.local_max_side}")
        # each stage checks its own fields (a bad value names the field)
        object.__setattr__(self, "scales", self.gem_config().scales)
        self.aliked_config()

    def gem_config(self) -> GemConfig:
        """The GeM stage's settings."""
        return GemConfig(checkpoint=self.gem_checkpoint, preprocessing=self.preprocessing, max_side=self.max_side,
                         device=self.device, batch_size=self.batch_size, seed=self.seed, runtime=self.runtime,
                         backbone=self.backbone, backbone_weights=self.backbone_weights, gem_p=self.gem_p,
                         scales=self.scales, whitening=self.whitening)

    def aliked_config(self) -> AlikedConfig:
        """The ALIKED stage's settings (its ``max_side``: the smaller of ``local_max_side`` and ``max_side``)."""
        return AlikedConfig(checkpoint=self.checkpoint, variant=self.variant, max_keypoints=self.max_keypoints,
                            score_threshold=self.score_threshold, nms_radius=self.nms_radius,
                            max_side=min(self.local_max_side, max(self.max_side, 32)), device=self.device,
                            seed=self.seed, random_weights=self.random_weights)
