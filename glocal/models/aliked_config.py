"""Settings of the ``aliked`` extractor, importable without torch (the network: :mod:`glocal.models.aliked`)."""
from __future__ import annotations

from dataclasses import dataclass

from glocal.models.configs import check_choices, option

#: ALIKED variants of the official release (``aliked-<variant>.pth``); n16rot is n16 trained with rotations
ALIKED_VARIANTS: tuple[str, ...] = ("t16", "n16", "n16rot", "n32")


@dataclass(frozen=True)
class AlikedConfig:
    """Settings of the ``aliked`` extractor (:mod:`glocal.models.aliked`): ALIKED keypoints and SDDH
    descriptors (Zhao et al., IEEE TIM 2023) from the authors' weights; PyTorch only, one image at a time.
    Not a :class:`DeepExtractorConfig`: the network takes RGB in [0, 1] at one scale, no batching or runtimes."""

    checkpoint: str | None = option(
        None, "ALIKED weights: the release's aliked-<variant>.pth (a plain state dict) or a glocal file; required "
        "(--checkpoint aliked-n16 downloads the BSD-3-Clause release)")
    variant: str = option("n16", "network of the checkpoint: t16 (64-D descriptors), n16, n16rot (n16 trained with "
                          "rotations) or n32 (32 sampling positions per descriptor)", ALIKED_VARIANTS)
    max_keypoints: int = option(2000, "keep the strongest keypoints, at most this many per image")
    score_threshold: float = option(0.2, "keep score-map maxima above this (the release's 0.2; none above: the "
                                    "map's mean)")
    nms_radius: int = option(2, "non-maximum suppression radius in pixels (window 2r+1; also the soft-argmax window)")
    max_side: int = option(1024, "images are loaded with their longest side at most this many pixels")
    device: str = option("cpu", "torch device: cpu, cuda or cuda:i")
    seed: int = option(0, "seed of the random initialisation (random_weights only)")
    random_weights: bool = option(False, "run without a checkpoint on random weights (plumbing tests only: the "
                                  "features are meaningless)")

    def __post_init__(self) -> None:
        what = type(self).__name__
        if self.checkpoint is not None:
            object.__setattr__(self, "checkpoint", str(self.checkpoint) or None)
        check_choices(self, what)
        if self.max_keypoints < 1:
            raise ValueError(f"{what}: max_keypoints must be >= 1, got {self.max_keypoints}")
        if self.nms_radius < 1:
            raise ValueError(f"{what}: nms_radius must be >= 1, got {self.nms_radius}")
        if self.max_side < 32:
            raise ValueError(f"{what}: max_side must be >= 32, got {self.max_side}")
        object.__setattr__(self, "score_threshold", float(self.score_threshold))
