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

:class:`EfficientNetLiteTrunk` taps EfficientNet-Lite (Tan & Le, ICML 2019) twice: after the last block at
stride 16 and after its head convolution (stride 32, 1280 channels); its input is ``(255 x - 127) / 128``
as in the TensorFlow reference. Its ImageNet classifier is dropped, so detector checkpoints do not carry it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glocal.models.backbones.efficientnet_lite import EfficientNetLite, load_pretrained

#: backbone names :func:`build_trunk` knows
TRUNKS: tuple[str, ...] = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EfficientNetLiteTrunk(nn.Module):
    """EfficientNet-Lite giving its stride-16 and stride-32 maps (see the module docstring).

    :param name: ``efficientnet-lite0``, ``-lite1`` or ``-lite2``.
    :param pretrained: load the ImageNet weights of the ``pretrained`` extra (raises
        :class:`~glocal.errors.MissingDependencyError` when it is not installed).
    """

    def __init__(self, name: str = "efficientnet-lite0", pretrained: bool = False) -> None:
        super().__init__()
        self.net = EfficientNetLite(name)
        if pretrained:
            load_pretrained(self.net)
        self.net._fc = nn.Identity()  # the ImageNet classifier is not used
        stride, self.tap = 2, -1
        for i, block in enumerate(self.net._blocks):
            stride *= block._depthwise_conv.stride[0]
            if stride == 16:
                self.tap = i
        self.strides = (16, 32)
        self.channels = (self.net._blocks[self.tap]._project_conv.out_channels, self.net.out_channels)

    @staticmethod
    def normalize(x: Tensor) -> Tensor:
        """[0, 1] RGB -> ``(255 x - 127) / 128``."""
        return (x * 255.0 - 127.0) / 128.0

    def forward(self, x: Tensor) -> list[Tensor]:
        net = self.net
        x = F.relu6(net._bn0(net._conv_stem(x)))
        taps = []
        for i, block in enumerate(net._blocks):
            x = block(x)
            if i == self.tap:
                taps.append(x)
        taps.append(F.relu6(net._bn1(net._conv_head(x))))
        return taps


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
    return EfficientNetLiteTrunk(name, pretrained)
