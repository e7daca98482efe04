"""Backbones as feature trunks of the landmark detector.

A *trunk* is an ``nn.Module`` whose ``forward`` maps normalised images (B, 3, H, W) to a list of feature maps,
finest first, and which has

* ``strides``: the stride of each map (e.g. ``(16, 32)``);
* ``channels``: the channel count of each map;
* ``normalize(x)``: images with values in [0, 1] -> the backbone's input.

:func:`as_trunk` turns a backbone into a trunk: a module that already is one is used as it is; any module
with ``features(x)``, ``out_channels`` and ``stride`` (the interface of
:class:`~glocal.models.backbones.efficientnet_lite.EfficientNetLite`, which other backbones of
:mod:`glocal.models.backbones` follow) becomes a one-map trunk, normalised with its own ``normalize`` when it
has one, else with the ImageNet statistics (mean 0.485, 0.456, 0.406; std 0.229, 0.224, 0.225, RGB).

:class:`RegistryTrunk` builds any backbone of :mod:`glocal.models.backbones` by name (ResNet-50/101,
EfficientNet-Lite0/1/2, MobileNetV2) and taps its stride-16 (``res4``) and stride-32 (``res5``) maps, with the
pixel preprocessing preset its catalog entry names (e.g. ``(255 x - 127) / 128`` for EfficientNet-Lite, as in
the TensorFlow reference). Parameter names are the backbone's under ``net.``; for EfficientNet-Lite they are the
package state dict's, so detector files saved by the former EfficientNet-only trunk load unchanged.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from glocal.errors import MissingDependencyError
from glocal.models.backbones import BACKBONE_NAMES, RANDOM, STRIDE16, STRIDE32, build, info
from glocal.models.geometry.pyramid import preprocessing_by_name

#: backbone names :func:`build_trunk` knows: every backbone of the registry
TRUNKS: tuple[str, ...] = tuple(BACKBONE_NAMES)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RegistryTrunk(nn.Module):
    """A registry backbone giving its stride-16 and stride-32 maps (see the module docstring).

    :param name: a name of :data:`TRUNKS`.
    :param pretrained: load the ImageNet weights its package ships (raises
        :class:`~glocal.errors.MissingDependencyError` naming the install when the package is absent; a ResNet,
        which ships no package weights, stays random with a warning).
    """

    def __init__(self, name: str = "efficientnet-lite0", pretrained: bool = False) -> None:
        super().__init__()
        if pretrained and info(name).weights is None:
            raise MissingDependencyError(f"backbone {name!r} ships no ImageNet weights in a package")
        self.net = build(name, weights=None if pretrained else RANDOM)
        self.strides = (16, 32)
        self.channels = (int(self.net.channels[STRIDE16]), int(self.net.channels[STRIDE32]))
        prep = preprocessing_by_name(info(name).preprocessing)
        self._bgr = prep.bgr
        scale = 255.0 / prep.divisor  # [0, 1] pixels -> the preset's units
        self.register_buffer("mean", torch.tensor(prep.mean).view(1, 3, 1, 1) / scale, persistent=False)
        self.register_buffer("std", torch.tensor(prep.std).view(1, 3, 1, 1) / scale, persistent=False)

    def normalize(self, x: Tensor) -> Tensor:
        """[0, 1] RGB -> the backbone's input: ``(x * 255 / divisor - mean) / std`` of its preset."""
        if self._bgr:
            x = x.flip(1)
        return (x - self.mean) / self.std

    def forward(self, x: Tensor) -> list[Tensor]:
        maps = self.net(x, (STRIDE16, STRIDE32))
        return [maps[STRIDE16], maps[STRIDE32]]


class FeatureTrunk(nn.Module):
    """A one-map trunk around a module with ``features(x)``, ``out_channels`` and ``stride``."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.strides = (int(backbone.stride),)
        self.channels = (int(backbone.out_channels),)
        own = getattr(backbone, "normalize", None)
        self._own_normalize = own if callable(own) else None
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalize(self, x: Tensor) -> Tensor:
        if self._own_normalize is not None:
            return self._own_normalize(x)
        return (x - self.mean) / self.std

    def forward(self, x: Tensor) -> list[Tensor]:
        return [self.backbone.features(x)]


def as_trunk(backbone: nn.Module) -> nn.Module:
    """``backbone`` as a trunk (see the module docstring); :class:`TypeError` when it offers neither interface."""
    if isinstance(getattr(backbone, "strides", None), tuple) and isinstance(getattr(backbone, "channels", None), tuple) \
            and callable(getattr(backbone, "normalize", None)):
        return backbone
    if callable(getattr(backbone, "features", None)) and hasattr(backbone, "out_channels") and hasattr(backbone, "stride"):
        return FeatureTrunk(backbone)
    raise TypeError(f"trunk.py: a detector backbone needs features(x), out_channels and stride (or strides, channels "
                    f"and normalize), got {type(backbone).__name__}")


def build_trunk(name: str, pretrained: bool) -> nn.Module:
    """The trunk called ``name`` (one of :data:`TRUNKS`), with ImageNet weights when ``pretrained``."""
    if name not in TRUNKS:
        raise ValueError(f"trunk.py: unknown detector backbone {name!r}; available: {', '.join(TRUNKS)} "
                         "(or pass a backbone module to LandmarkDetector)")
    return RegistryTrunk(name, pretrained)
