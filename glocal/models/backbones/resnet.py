"""ResNet-50 / ResNet-101 (He et al., CVPR 2016) in plain PyTorch, cut into the stages res2..res5.

Stage names follow the ResNet paper (Table 1): ``res2`` = conv2_x (``layer1``, 256 channels, stride 4),
``res3`` = conv3_x (``layer2``, 512, stride 8), ``res4`` = conv4_x (``layer3``, 1024, stride 16), ``res5`` =
conv5_x (``layer4``, 2048, stride 32). DELG calls res4 / res5 "conv4" / "conv5"; DOLG's "Res3" / "Res4" are our
res4 / res5 (its local features have C = 1024). Blocks are bottlenecks 1x1 -> 3x3 -> 1x1 (expansion 4), with a
1x1 projection shortcut on the first block of each stage; [3, 4, 6, 3] blocks for ResNet-50, [3, 4, 23, 3] for
ResNet-101. Parameter names are torchvision's (``conv1.weight``, ``layer3.5.bn2.running_var``, ...), so its
ImageNet state dicts and every glocal checkpoint load as they are (the classifier ``fc.*`` is ignored).

Two layer conventions, so that released weights reproduce their features:

* ``style="torchvision"``: stride 2 on the 3x3 convolution of each stage's first block, no convolution
  biases, batch-norm eps 1e-5, symmetric stem padding (torchvision, and pycls with ``STRIDE_1X1: False``,
  the DOLG PyTorch port).
* ``style="tf"``: the Keras ResNet-50 of TensorFlow's DELF/DELG release: stride 2 on the first 1x1
  convolution, convolutions with biases, batch-norm eps 1e-3, stem 7x7 convolution with TF ``'same'``
  padding (:class:`SamePad2d`) and a 3x3 / 2 max-pool without padding.

``decimate_res4`` reproduces TF's ``block3_strides``: res4 is sub-sampled by 2 (a 1x1 max-pool with stride 2)
before it is returned and fed to res5, whose first block then has stride 1 (res4 and res5 both at stride 32).
``last_stage="res4"`` drops res5 (the "R50-" backbone of HOW / FIRe).

Weights: a torchvision-format state dict (``weights=path``, read with ``weights_only=True``); without one the
network is randomly initialised (He normal, fan-out, for the convolutions; batch norms at identity) and a
warning says so.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from glocal.models.backbones.stages import FeatureBackbone, load_matching, read_state_dict

STAGES = ("res2", "res3", "res4", "res5")
STAGE_CHANNELS = {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}
STAGE_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
_LAYER_OF = {"res2": "layer1", "res3": "layer2", "res4": "layer3", "res5": "layer4"}
EXPANSION = 4


class SamePad2d(nn.Module):
    """TensorFlow ``padding='same'`` in front of an unpadded convolution / pooling of (kernel, stride).

    TF pads ``total = max((ceil(n / s) - 1) * s + k - n, 0)`` pixels, ``total // 2`` before and the rest
    after, so the padding (and the receptive-field offset) depends on the input size ``n``; ``pads(n)``
    lets :func:`glocal.models.geometry.receptive_field.receptive_field` follow it.
    """

    def __init__(self, kernel_size: int, stride: int, dilation: int = 1) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation

    def pads(self, n: int) -> tuple[int, int]:
        """(before, after) padding for an input of length ``n``."""
        k = self.dilation * (self.kernel_size - 1) + 1
        total = max((math.ceil(n / self.stride) - 1) * self.stride + k - n, 0)
        return total // 2, total - total // 2

    def forward(self, x: Tensor) -> Tensor:
        top, bottom = self.pads(x.shape[-2])
        left, right = self.pads(x.shape[-1])
        return F.pad(x, (left, right, top, bottom))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, dilation={self.dilation}"


@dataclass(frozen=True)
class BackboneConfig:
    """How to build a ResNet backbone.

    :param depth: 50 or 101.
    :param weights: optional path to torchvision-format ImageNet weights (``resnet50-*.pth``); ``None``
        gives a random initialisation (seeded by the caller with ``torch.manual_seed``) and a warning.
    :param style: ``"torchvision"`` or ``"tf"`` (see the module docstring).
    :param decimate_res4: TF ``block3_strides``: res4 returned at stride 32, res5 without extra stride.
    :param last_stage: ``"res5"`` (full network) or ``"res4"`` (drop the last stage, R50- of HOW).
    """

    depth: int = 50
    weights: str | None = None
    style: str = "torchvision"
    decimate_res4: bool = False
    last_stage: str = "res5"

    def __post_init__(self) -> None:
        if self.depth not in BLOCKS:
            raise ValueError(f"resnet.py: depth must be 50 or 101, got {self.depth}")
        if self.style not in ("torchvision", "tf"):
            raise ValueError(f"resnet.py: style must be 'torchvision' or 'tf', got {self.style!r}")
        if self.last_stage not in ("res4", "res5"):
            raise ValueError(f"resnet.py: last_stage must be 'res4' or 'res5', got {self.last_stage!r}")


class Bottleneck(nn.Module):
    """1x1 (width) -> 3x3 (width) -> 1x1 (4 x width), batch norm after each, ReLU after the first two and after
    the sum with the shortcut (a 1x1 projection + batch norm when the shape changes)."""

    def __init__(self, in_channels: int, width: int, stride: int, tf_style: bool) -> None:
        super().__init__()
        out = width * EXPANSION
        eps = 1e-3 if tf_style else 1e-5
        s1, s3 = (stride, 1) if tf_style else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, width, 1, stride=s1, bias=tf_style)
        self.bn1 = nn.BatchNorm2d(width, eps=eps)
        self.conv2 = nn.Conv2d(width, width, 3, stride=s3, padding=1, bias=tf_style)
        self.bn2 = nn.BatchNorm2d(width, eps=eps)
        self.conv3 = nn.Conv2d(width, out, 1, bias=tf_style)
        self.bn3 = nn.BatchNorm2d(out, eps=eps)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out, 1, stride=stride, bias=tf_style),
                                            nn.BatchNorm2d(out, eps=eps))

    def receptive_path(self) -> list[nn.Module]:
        """The main path (the shortcut has the same stride and no offset)."""
        return [self.conv1, self.conv2, self.conv3]

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


def make_stage(in_channels: int, width: int, blocks: int, stride: int, tf_style: bool) -> nn.Sequential:
    """One stage: ``blocks`` bottlenecks, the first with ``stride`` and the projection shortcut."""
    layers = [Bottleneck(in_channels, width, stride, tf_style)]
    layers += [Bottleneck(width * EXPANSION, width, 1, tf_style) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def init_resnet(module: nn.Module) -> None:
    """He normal initialisation (fan-out) of the convolutions, batch norms at identity, biases at zero."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResNetBackbone(FeatureBackbone):
    """A ResNet cut into stages; ``forward(x, outputs)`` returns a dict of the requested stage outputs."""

    def __init__(self, config: BackboneConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or BackboneConfig()
        self.name = f"resnet{config.depth}"
        tf_style = config.style == "tf"
        self.stem_pad: nn.Module = SamePad2d(7, 2) if tf_style else nn.Identity()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=0 if tf_style else 3, bias=tf_style)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-3 if tf_style else 1e-5)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=0 if tf_style else 1)
        self.stages = STAGES if config.last_stage == "res5" else STAGES[:3]
        blocks, channels = BLOCKS[config.depth], 64
        for i, stage in enumerate(self.stages):
            width = 64 * 2 ** i
            stride = 1 if i == 0 or (stage == "res5" and config.decimate_res4) else 2
            setattr(self, _LAYER_OF[stage], make_stage(channels, width, blocks[i], stride, tf_style))
            channels = width * EXPANSION
        self.res4_pool: nn.Module = nn.MaxPool2d(1, stride=2) if config.decimate_res4 else nn.Identity()
        self.channels = {s: STAGE_CHANNELS[s] for s in self.stages}
        self.strides = dict(STAGE_STRIDES) | ({"res4": 32} if config.decimate_res4 else {})
        init_resnet(self)
        if config.weights:
            self.load_imagenet(config.weights)
        else:
            warnings.warn(
                f"resnet.py: ResNet-{config.depth} has NO pretrained weights (no ImageNet file given): "
                "randomly initialised, its features are meaningless until trained or a checkpoint is loaded",
                stacklevel=2,
            )

    def stem_modules(self) -> list[nn.Module]:
        return [self.stem_pad, self.conv1, self.bn1, self.relu, self.maxpool]

    def stage_modules(self, stage: str) -> list[nn.Module]:
        layer = getattr(self, _LAYER_OF[stage])
        return [layer, self.res4_pool] if stage == "res4" else [layer]

    def load_imagenet(self, path: str | Path) -> None:
        """Load torchvision-format ImageNet weights from ``path`` (``weights_only=True``); the classifier is
        ignored, and so is res5 when the network stops at res4.

        :raises glocal.errors.BadCheckpointError: (a ``ValueError``) naming the file and the missing /
            unexpected / mis-shaped parameters.
        """
        what = f"resnet.py (ResNet-{self.config.depth}, torchvision-format state dict)"
        ignore = ("fc.",) + (("layer4.",) if self.config.last_stage == "res4" else ())
        # conv biases exist only in the tf style; torchvision weights have none: they stay at zero.
        optional = frozenset(k for k in self.state_dict()
                             if k.endswith(".bias") and ("conv" in k or "downsample.0" in k))
        load_matching(self, read_state_dict(path, what), what, path, ignore, optional)
