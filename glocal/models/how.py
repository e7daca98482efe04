"""HOW local features (Tolias, Jenicek & Chum, "Learning and aggregating deep local descriptors for
instance-level recognition", ECCV 2020), and the multi-scale extraction shared with FIRe.

Model (HOW sec. 3; FIRe sec. 2): a ResNet without its last stage (R50-, res4 = conv4 output, 1024-D,
stride 16) gives local activations u_l; the strength of a feature is its L2 norm ||u_l|| (computed on
the raw activations); the descriptor is o(u_l), the frozen PCA-whitening to 128-D
(:mod:`glocal.models.layers.whitening`) applied after a 3x3 average "smoothing" of the activation map
(stride 1, padding 1, borders averaged over valid cells only; reference HOW setting ``kernel_size: 3``),
then L2-normalised. Training uses the global descriptor of HOW eq. 1 (FIRe eq. 1):
g(U) = g^ / ||g^||, g^ = sum_l ||u_l|| o(u_l), with the contrastive loss of eq. 2
(:func:`glocal.train.fire_losses.global_contrastive_loss`).

Extraction (HOW / FIRe test protocol): images at max side 1024, 7 scales {2, 1.414, 1, 0.707, 0.5,
0.353, 0.25}, the 1,000 strongest features over all scales. Keypoints are receptive-field centres of the
res4 cells (:mod:`glocal.models.geometry.receptive_field`) mapped back to original-image pixels; a feature's
scale is the size of one res4 cell (16 px at level scale 1) in original-image pixels. Pyramid levels are
``round(side * scale)`` pixels (the shared :mod:`glocal.models.geometry.pyramid`); the reference code uses
``interpolate(scale_factor=s)``, i.e. ``floor``, so a level may differ by one pixel. The extractor's
settings: :class:`glocal.models.configs.HowConfig` (torch-free; importable from here too).
"""
from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glocal.io.images import LoadedImage
from glocal.models import backbones
from glocal.models.backbones.catalog import STRIDE16
from glocal.models.backbones.stages import FeatureBackbone
from glocal.models.configs import RANDOM_WEIGHTS, HowConfig, HowFireConfig, resolved_preprocessing
from glocal.models.extractor_base import seeded_init, warn_if_bf16_is_slow
from glocal.models.geometry.pyramid import (
    LocalCandidates,
    PyramidLevel,
    image_to_tensor,
    level_size,
    preprocessing_by_name,
    resize,
    run_pyramid,
    select_top_features,
)
from glocal.models.geometry.receptive_field import feature_centers_xy, receptive_field
from glocal.models.how_fire_checkpoints import load_into, save_glocal_checkpoint
from glocal.models.layers.whitening import PCAWhitening, stack_feature_sample
from glocal.records import ImageFeatures


def build_trunk(backbone: str | int = "resnet50", imagenet_weights: str | None = None) -> FeatureBackbone:
    """A backbone up to its stride-16 map (:func:`glocal.models.backbones.build` with ``last_stage="res4"``): for
    ``resnet50`` / ``resnet101`` (or a depth 50 / 101) the papers' R50- / R101- (1024 channels)."""
    name = f"resnet{backbone}" if isinstance(backbone, int) else backbone
    with warnings.catch_warnings():  # the extractor issues its own, more specific warning
        warnings.filterwarnings("ignore", message=".*NO pretrained weights.*")
        return backbones.build(name, imagenet_weights, last_stage=STRIDE16)


def config_trunk(config: HowFireConfig) -> FeatureBackbone:
    """The trunk a HOW / FIRe config asks for (random when a checkpoint will replace its weights)."""
    return build_trunk(config.backbone, RANDOM_WEIGHTS if config.checkpoint else config.imagenet_weights)


def trunk_forward(trunk: nn.Module, x: Tensor, bf16: bool = False) -> Tensor:
    """(B, 3, H, W) -> (B, D, h, w) local activations; any ``nn.Module`` trunk returning a map works.

    :param bf16: run the trunk under bfloat16 autocast (``runtime="torch-bf16"``) and return float32: the
        convolutions are where the time goes; the heads (whitening, LIT) stay in float32.
    """
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = trunk(x, outputs=(STRIDE16,))[STRIDE16] if isinstance(trunk, FeatureBackbone) else trunk(x)
    return out.float() if bf16 else out


def trunk_path(trunk: nn.Module) -> list[nn.Module]:
    """The trunk's layers from input to output, for the receptive-field walk."""
    return trunk.path_to(STRIDE16) if isinstance(trunk, FeatureBackbone) else [trunk]


@dataclass(frozen=True)
class HowLocalFeatures:
    """HOW local features of a batch (locations row-major over the (h, w) map).

    :param raw: (B, L, D) smoothed activations, the input of o(.).
    :param whitened: (B, L, k) o(raw), not normalised.
    :param strengths: (B, L) L2 norms of the un-smoothed activations.
    :param size: (h, w) of the activation map.
    """

    raw: Tensor
    whitened: Tensor
    strengths: Tensor
    size: tuple[int, int]


class HowNet(nn.Module):
    """Trunk + smoothing + frozen whitening o(.) (module docstring). ``glocal train how`` trains the trunk
    (HOW sec. 3: the attention ||u_l|| and the smoothing have no parameters; o(.) is made of buffers, fitted
    before training when it is not, and stays frozen).

    :param trunk: (B, 3, H, W) -> (B, feature_dim, H/16, W/16); :func:`build_trunk` by default.
    :param feature_dim: D (1024 for R50-).
    :param output_dim: k (128).
    :param smoothing_kernel: side of the average smoothing (3; 1 or 0 disables it).
    """

    checkpoint_family = "how"  #: the family glocal train's export writes (``glocal/how/N``)

    def __init__(self, trunk: nn.Module | None = None, feature_dim: int = 1024, output_dim: int = 128,
                 smoothing_kernel: int = 3) -> None:
        super().__init__()
        self.backbone = trunk if trunk is not None else build_trunk()
        self.smoothing_kernel = smoothing_kernel
        self.whiten = PCAWhitening(feature_dim, output_dim)
        self.trunk_bf16 = False  # set by the extractor for runtime="torch-bf16" (see trunk_forward)

    def smooth(self, fmap: Tensor) -> Tensor:
        k = self.smoothing_kernel
        if k <= 1:
            return fmap
        return F.avg_pool2d(fmap, k, stride=1, padding=k // 2, count_include_pad=False)

    def local_features(self, x: Tensor) -> HowLocalFeatures:
        """Local features, strengths ||u_l|| and o(.) of a batch of images."""
        fmap = trunk_forward(self.backbone, x, self.trunk_bf16)
        strengths = (fmap.pow(2).sum(1) + 1e-10).sqrt().flatten(1)
        raw = self.smooth(fmap).flatten(2).transpose(1, 2)
        return HowLocalFeatures(raw, self.whiten(raw), strengths, (int(fmap.shape[-2]), int(fmap.shape[-1])))

    def global_descriptor(self, x: Tensor) -> Tensor:
        """HOW eq. 1 (FIRe eq. 1): g = normalise(sum_l ||u_l|| o(u_l)), (B, k)."""
        local = self.local_features(x)
        return F.normalize((local.strengths.unsqueeze(-1) * local.whitened).sum(1), dim=-1)

    forward = global_descriptor


class PyramidExtractor:
    """Multi-scale extraction shared by HOW and FIRe; subclasses give one level's outputs.

    ``_level_outputs(x, level, raw)`` returns, per batch element, ``descriptors`` (n, k) (or the
    un-whitened (n, D) input of o(.) when ``raw``), ``strengths`` (n,), ``xy`` (n, 2) in level pixels
    and ``global`` (k,) = sum of strength x o(.) (HOW eq. 1 before normalisation).
    """

    name = "pyramid"
    method = ""

    def __init__(self, config: HowFireConfig, net: nn.Module) -> None:
        self.config = config
        self.device = torch.device(config.device)
        # channels_last convolutions (oneDNN on CPU, tensor cores on CUDA): faster, same results
        self.net = net.to(self.device).eval().to(memory_format=torch.channels_last)
        self.preprocessing = preprocessing_by_name(resolved_preprocessing(config))
        self.net.trunk_bf16 = config.runtime == "torch-bf16"
        if self.net.trunk_bf16:
            warn_if_bf16_is_slow(self.device, self.method or self.name)
        self._centres: dict[tuple[int, int, int, int], Tensor] = {}
        self._stride = 16.0

    @property
    def max_side(self) -> int:
        return int(self.config.max_side)

    @property
    def descriptor_dim(self) -> int:
        return int(self.net.whiten.out_dim)

    def _load(self, expected: dict[str, Any]) -> None:
        """Load ``config.checkpoint`` (official or glocal) or warn loudly about the random weights."""
        if self.config.checkpoint is None:
            warnings.warn(
                f"{self.method}.py: the {self.method.upper()} extractor has NO trained weights (checkpoint=None): "
                f"randomly initialised (seed {self.config.seed}), its features are meaningless. Pass "
                "checkpoint=<official .pth or glocal file> for real results.",
                stacklevel=3,
            )
            return
        info = load_into(self.net, self.config.checkpoint, self.method, expected)
        self.net.whiten.warn_if_unfitted(f"{self.method}.py")
        mean_std = info["hyper_parameters"].get("mean_std")
        prep = self.preprocessing
        if mean_std is not None and (prep.bgr or prep.divisor != 255.0 or not np.allclose(mean_std, [prep.mean, prep.std])):
            warnings.warn(f"{self.method}.py: {self.config.checkpoint} was trained with mean/std {mean_std} on RGB "
                          f"[0, 1] pixels, but preprocessing={self.config.preprocessing!r} differs", stacklevel=3)

    def centres(self, fmap_size: tuple[int, int], level_size: tuple[int, int]) -> Tensor:
        """(h * w, 2) receptive-field centres (x, y) of the trunk's output cells, in level pixels."""
        key = (*fmap_size, *level_size)
        if key not in self._centres:
            path = trunk_path(self.net.backbone)
            rf_y = receptive_field(path, axis=0, input_length=level_size[0])
            rf_x = receptive_field(path, axis=1, input_length=level_size[1])
            self._stride = float(rf_x.stride)
            xy = feature_centers_xy(rf_y, rf_x, *fmap_size)
            self._centres[key] = torch.from_numpy(xy).float().to(self.device)
        return self._centres[key]

    def _level_outputs(self, x: Tensor, level: PyramidLevel, raw: bool) -> dict[str, Tensor]:
        raise NotImplementedError

    def run_levels(self, image: LoadedImage, scales: Sequence[float], raw: bool = False
                   ) -> list[tuple[PyramidLevel, dict[str, Tensor]]]:
        """Run every pyramid level of ``image``; outputs on CPU, one entry per scale."""
        with torch.inference_mode():
            tensor = image_to_tensor(image.pixels, self.preprocessing, self.device)
            return run_pyramid([tensor], scales, lambda x, lv: self._level_outputs(x, lv, raw),
                               batch_size=self.config.batch_size, channels_last=True)[0]

    def extract(self, image: LoadedImage, name: str) -> ImageFeatures:
        """The ``max_keypoints`` strongest features over ``config.scales``; keypoints and scales in
        original-image pixels; ``global_descriptor`` = the multi-scale HOW eq. 1 vector (1, k)."""
        levels = self.run_levels(image, self.config.scales)
        candidates = [LocalCandidates(out["descriptors"], out["strengths"], out["xy"].double().numpy(), lv)
                      for lv, out in levels]
        selected = select_top_features(candidates, self.config.max_keypoints, threshold=-math.inf)
        inv = 1.0 / image.scale
        global_vec = F.normalize(torch.stack([out["global"] for _, out in levels]).sum(0), dim=0)
        return ImageFeatures(
            name=name,
            image_size=image.original_size,
            descriptors=selected.descriptors.astype(np.float32),
            keypoints=(selected.xy * inv + np.asarray(image.offset, np.float32)).astype(np.float32),
            scales=(selected.scales * self._stride * inv).astype(np.float32),
            strengths=selected.strengths.astype(np.float32),
            global_descriptor=global_vec.numpy().astype(np.float32)[None],
        )

    def raw_features(self, image: LoadedImage, scales: Sequence[float] = (1.0,), max_features: int = 1000) -> Tensor:
        """The un-whitened input of o(.) for the ``max_features`` strongest features over ``scales``
        (what the reference code fits the whitening on: scale 1, top 1,000)."""
        levels = self.run_levels(image, scales, raw=True)
        feats = torch.cat([out["descriptors"] for _, out in levels])
        strengths = torch.cat([out["strengths"] for _, out in levels])
        order = torch.argsort(-strengths, stable=True)[:max_features]
        return feats[order]

    # -- glocal train (regimes "tuples" for HOW, "tuples-superfeatures" for FIRe) ---------------------------------
    #: images o(.) is fitted on before training when it is not fitted yet (reference training: the first 5,000
    #: training images, scale 1, the 1,000 strongest features of each)
    whitening_images = 5000

    def trainable_network(self) -> nn.Module:
        """The network ``glocal train`` fine-tunes, in place: trunk (+ LIT for FIRe) train; the whitening o(.)
        (buffers) stays frozen, as in both papers. Its state dict is what ``checkpoint=`` loads back."""
        return self.net

    def prepare_training(self, images: Iterable[LoadedImage]) -> int:
        """Fit o(.) on ``images`` (the first :attr:`whitening_images`, scale 1, top 1,000 features each) unless it
        is already fitted (a trained checkpoint); returns the number of images used (0: nothing done)."""
        if bool(self.net.whiten.fitted):
            return 0
        used = list(itertools.islice(images, self.whitening_images))
        fit_whitening(self, used, features_per_image=1000)
        return len(used)

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write the network in the glocal format (with the fitted whitening)."""
        config = {k: v for k, v in asdict(self.config).items() if k != "checkpoint"}
        return save_glocal_checkpoint(path, self.net, self.method, config)


def descriptor_outputs(whitened: Tensor, strengths: Tensor, normalise: bool) -> dict[str, Tensor]:
    return {
        "descriptors": F.normalize(whitened, dim=-1) if normalise else whitened,
        "strengths": strengths,
        "global": (strengths.unsqueeze(-1) * whitened).sum(1),
    }


class HowExtractor(PyramidExtractor):
    """HOW local features through the extractor interface (``name``, ``max_side``, ``config``, ``extract``)."""

    name = "how"
    method = "how"
    #: ``glocal train how`` defaults: the reference HOW R50- training (gtolias/how, ECCV 2020 settings): Adam,
    #: lr 1e-6, weight decay 1e-4, contrastive margin 0.8, images at 1,024 px, 5 tuples of 1 query, 1 positive and
    #: 5 hard negatives per batch, 2,000 queries per epoch mined from a pool of 20,000 images, the learning rate
    #: x0.99 per epoch (400 steps: 0.99 ** (1 / 400) per step)
    training_defaults = {"lr": 1e-6, "weight_decay": 1e-4, "margin": 0.8, "image_size": 1024, "batch": 5,
                         "negatives": 5, "queries_per_epoch": 2000, "pool_size": 20000, "lr_gamma": 0.99 ** (1 / 400)}

    def __init__(self, config: HowConfig | None = None, trunk: nn.Module | None = None, feature_dim: int = 1024) -> None:
        """:param trunk: replaces the config's trunk (tests, experiments); it must output ``feature_dim`` channels
            (without it, the dimension is the config backbone's stride-16 channels)."""
        config = config or HowConfig()
        with seeded_init(config.seed):
            if trunk is None:
                trunk = config_trunk(config)
                feature_dim = trunk.channels[STRIDE16]
            net = HowNet(trunk, feature_dim=feature_dim, output_dim=config.output_dim,
                         smoothing_kernel=config.smoothing_kernel)
        super().__init__(config, net)
        self._load({"backbone": config.backbone, "depth": config.depth, "output_dim": config.output_dim,
                    "smoothing_kernel": config.smoothing_kernel})

    def strength_map(self, image: LoadedImage, scale: float = 1.0) -> npt.NDArray[np.float32]:
        """(h, w) map of the strengths ||u_l|| of one pyramid level (what ranks HOW's features)."""
        with torch.inference_mode():
            x = image_to_tensor(image.pixels, self.preprocessing, self.device)
            x = resize(x, level_size(x.shape[-2], x.shape[-1], scale))
            local = self.net.local_features(x)
        return local.strengths[0].reshape(local.size).float().cpu().numpy()

    def _level_outputs(self, x: Tensor, level: PyramidLevel, raw: bool) -> dict[str, Tensor]:
        local = self.net.local_features(x)
        out = descriptor_outputs(local.whitened, local.strengths, self.config.l2_normalize)
        if raw:
            out["descriptors"] = local.raw
        out["xy"] = self.centres(local.size, level.size).expand(x.shape[0], -1, -1)
        return out


def collect_whitening_sample(
    extractor: PyramidExtractor, images: Iterable[LoadedImage], features_per_image: int = 1000,
    scales: Sequence[float] = (1.0,), max_features: int | None = None, seed: int = 0,
) -> npt.NDArray[np.float32]:
    """Un-whitened features of ``images`` (top ``features_per_image`` per image by strength at
    ``scales``), optionally sub-sampled (seeded) to ``max_features`` rows: the sample o(.) is fitted on."""
    return stack_feature_sample((extractor.raw_features(im, scales, features_per_image) for im in images),
                                max_features=max_features, seed=seed)


def fit_whitening(
    extractor: PyramidExtractor, images: Iterable[LoadedImage], features_per_image: int = 1000,
    scales: Sequence[float] = (1.0,), shrinkage: float = 1.0, max_features: int | None = None, seed: int = 0,
) -> PCAWhitening:
    """Learn o(.) of ``extractor`` from ``images`` (reference setting: the first 5,000 SfM-120k training
    images, scale 1, top 1,000 features each) and set it in the extractor's network (the ``glocal whiten``
    step; save with ``extractor.save_checkpoint(path)``)."""
    sample = collect_whitening_sample(extractor, images, features_per_image, scales, max_features, seed)
    return extractor.net.whiten.fit(sample, shrinkage=shrinkage)
