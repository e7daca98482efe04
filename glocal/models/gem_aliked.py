"""``gem-aliked``: the two-stage global + local design of DELG (Cao et al., ECCV 2020) with learned parts that
have real weights here: a GeM global descriptor of an ImageNet EfficientNet-Lite (:mod:`glocal.models.gem`) for
the shortlist, and ALIKED keypoints + SDDH descriptors (:mod:`glocal.models.aliked`, the authors' MegaDepth
weights) for its spatial verification.

Nothing is re-implemented: :class:`GemAlikedExtractor` composes a :class:`~glocal.models.gem.GemExtractor`
(``global_part``) and an :class:`~glocal.models.aliked.AlikedExtractor` (``local_part``) built from the two
halves of one :class:`~glocal.models.gem_aliked_config.GemAlikedConfig`. An image is loaded once at
``max_side``; the GeM stage reads it as is, the ALIKED stage reads it shrunk (bilinear, as the loader resizes)
so that the *full* image's longest side is at most ``local_max_side``: with a query box, the crop keeps the
scale the whole image has, as in the revisited protocol. One record per image: the GeM vector as
``global_descriptor``, ALIKED's keypoints (original-image pixels), descriptors, scales and scores.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from glocal.errors import BadCheckpointError
from glocal.io.images import LoadedImage
from glocal.models.aliked import RELEASE_URL, AlikedExtractor
from glocal.models.gem import GemExtractor
from glocal.models.gem_aliked_config import GemAlikedConfig
from glocal.records import ImageFeatures

METHOD = "gem-aliked"


def shrink(image: LoadedImage, max_side: int) -> LoadedImage:
    """``image`` resized so that its *original* (uncropped) longest side maps to at most ``max_side`` pixels;
    the image itself when it already does. Offsets are kept: original = pixel / scale + offset still holds."""
    target = min(1.0, max_side / max(image.original_size))
    if image.scale <= target + 1e-9:
        return image
    factor = target / image.scale
    h, w = image.pixels.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    pixels = Image.fromarray(image.pixels).resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    return LoadedImage(pixels=np.asarray(pixels, dtype=np.uint8), original_size=image.original_size,
                       scale=image.scale * size[0] / w, offset=image.offset)


class GemAlikedExtractor:
    """GeM global descriptor + ALIKED local features of one image (module docstring)."""

    name = METHOD

    def __init__(self, config: GemAlikedConfig | None = None) -> None:
        self.config = cfg = config or GemAlikedConfig()
        if not cfg.checkpoint and not cfg.random_weights:
            raise BadCheckpointError(
                f"method {METHOD!r} needs the ALIKED weights: pass --checkpoint {METHOD}-{cfg.variant} (downloads the "
                f"BSD-3-Clause release from {RELEASE_URL}) or --set checkpoint=PATH/aliked-{cfg.variant}.pth")
        if cfg.checkpoint and not Path(cfg.checkpoint).is_file():
            raise BadCheckpointError(f"{cfg.checkpoint}: ALIKED checkpoint not found (method {METHOD!r}; the release "
                                     f"files are {RELEASE_URL}/aliked-<t16|n16|n16rot|n32>.pth)")
        self.local_part = AlikedExtractor(cfg.aliked_config())
        self.global_part = GemExtractor(cfg.gem_config())
        self.descriptor_dim = self.local_part.descriptor_dim

    @property
    def max_side(self) -> int:
        return self.config.max_side

    def extract(self, image: LoadedImage, name: str) -> ImageFeatures:
        """One record: the GeM descriptor of ``image`` and the ALIKED features of its shrunk copy."""
        glob = self.global_part.extract(image, name)
        local = self.local_part.extract(shrink(image, self.local_part.max_side), name)
        return ImageFeatures(name=name, image_size=image.original_size, descriptors=local.descriptors,
                             keypoints=local.keypoints, scales=local.scales, strengths=local.strengths,
                             global_descriptor=glob.global_descriptor)
