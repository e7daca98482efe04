"""ResNet-50 / ResNet-101 backbones (torchvision) exposing the res2..res5 feature maps.

Stage names follow the ResNet paper (He et al., CVPR 2016, Table 1): ``res2`` = conv2_x (torchvision
``layer1``, 256 channels, stride 4), ``res3`` = conv3_x (``layer2``, 512, stride 8), ``res4`` = conv4_x
(``layer3``, 1024, stride 16), ``res5`` = conv5_x (``layer4``, 2048, stride 32). DELG calls res4 / res5
"conv4" / "conv5"; DOLG's "Res3" / "Res4" are our res4 / res5 (its local features have C = 1024).

Two layer conventions are supported, so that released weights reproduce their features:

* ``style="torchvision"``: stride 2 on the 3x3 convolution of each stage's first block, no convolution
  biases, batch-norm eps 1e-5, symmetric stem padding. This is torchvision's ResNet and also pycls'
  with ``RESNET.STRIDE_1X1: False`` (the DOLG PyTorch port).
* ``style="tf"``: the Keras ResNet-50 of TensorFlow's DELF/DELG release (``delf/python/training/model/
  resnet50.py``): stride 2 on the first 1x1 convolution, convolutions with biases, Keras batch-norm
  eps 1e-3, stem 7x7 convolution with TF ``'same'`` padding and a 3x3 / 2 max-pool without padding.

``decimate_res4`` reproduces TF's ``block3_strides``: res4 is sub-sampled by 2 (a 1x1 max-pool with
stride 2) before it is returned and fed to res5, whose first block then has stride 1 (so res4 and res5
are both at stride 32). ``last_stage="res4"`` drops res5 (the "R50-" backbone of HOW / FIRe).

Weights: ImageNet weights are read from a local torchvision-format state dict (``weights=path``, loaded
with ``weights_only=True``); without a path the network is randomly initialised and a warning says so.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

STAGES = ("res2", "res3", "res4", "res5")
STAGE_CHANNELS = {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}
_LAYER_OF = {"res2": "layer1", "res3": "layer2", "res4": "layer3", "res5": "layer4"}


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
        if self.depth not in (50, 101):
            raise ValueError(f"backbone.py: depth must be 50 or 101, got {self.depth}")
        if self.style not in ("torchvision", "tf"):
            raise ValueError(f"backbone.py: style must be 'torchvision' or 'tf', got {self.style!r}")
        if self.last_stage not in ("res4", "res5"):
            raise ValueError(f"backbone.py: last_stage must be 'res4' or 'res5', got {self.last_stage!r}")


class ResNetBackbone(nn.Module):
    """A torchvision ResNet cut into stages; ``forward`` returns a dict of the requested stage outputs.

    Parameter names are torchvision's (``conv1.weight``, ``layer3.5.bn2.running_var``, ...), so
    torchvision ImageNet state dicts load as they are (the classifier ``fc.*`` is ignored).
    """

    def __init__(self, config: BackboneConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or BackboneConfig()
        builder = torchvision.models.resnet50 if config.depth == 50 else torchvision.models.resnet101
        net = builder(weights=None)
        tf_style = config.style == "tf"
        self.stem_pad: nn.Module = SamePad2d(7, 2) if tf_style else nn.Identity()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        self.res4_pool: nn.Module = nn.MaxPool2d(1, stride=2) if config.decimate_res4 else nn.Identity()
        self.stages = STAGES if config.last_stage == "res5" else STAGES[:3]
        if config.last_stage == "res5":
            self.layer4 = net.layer4
            if config.decimate_res4:
                _set_first_block_stride(self.layer4, 1)
        if tf_style:
            _to_tf_style(self)
        if config.weights:
            self.load_imagenet(config.weights)
        else:
            warnings.warn(
                f"backbone.py: ResNet-{config.depth} has NO pretrained weights (no ImageNet file given): "
                "randomly initialised, its features are meaningless until trained or a checkpoint is loaded",
                stacklevel=2,
            )

    @property
    def channels(self) -> dict[str, int]:
        """Channels of each available stage output."""
        return {s: STAGE_CHANNELS[s] for s in self.stages}

    def load_imagenet(self, path: str | Path) -> None:
        """Load torchvision-format ImageNet weights from ``path`` (``weights_only=True``).

        :raises ValueError: naming the file and the missing / unexpected / mis-shaped parameters.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"backbone.py: ImageNet weights file {path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
        if self.config.last_stage == "res4":
            state = {k: v for k, v in state.items() if not k.startswith("layer4.")}
        own = self.state_dict()
        # conv biases exist only in the tf style; torchvision weights have none: they stay at zero.
        optional = {k for k in own if k.endswith(".bias") and ("conv" in k or "downsample.0" in k)}
        missing = sorted(set(own) - set(state) - optional)
        unexpected = sorted(set(state) - set(own))
        misshaped = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                           for k in set(state) & set(own) if tuple(state[k].shape) != tuple(own[k].shape))
        if missing or unexpected or misshaped:
            raise ValueError(
                f"backbone.py: {path} is not a ResNet-{self.config.depth} torchvision state dict: "
                f"missing {missing[:10]}{'...' if len(missing) > 10 else ''}, unexpected {unexpected[:10]}, "
                f"mis-shaped {misshaped[:10]}"
            )
        self.load_state_dict(state, strict=False)

    def path_to(self, stage: str) -> list[nn.Module]:
        """The modules from the input to ``stage``'s output, in order (for receptive-field walks)."""
        if stage not in self.stages:
            raise ValueError(f"backbone.py: unknown or dropped stage {stage!r}; available {self.stages}")
        path: list[nn.Module] = [self.stem_pad, self.conv1, self.maxpool]
        for s in self.stages[: self.stages.index(stage) + 1]:
            path.append(getattr(self, _LAYER_OF[s]))
            if s == "res4":
                path.append(self.res4_pool)
        return path

    def forward(self, x: Tensor, outputs: Sequence[str] = ("res4", "res5")) -> dict[str, Tensor]:
        """Run the network up to the deepest stage in ``outputs`` and return those stage outputs.

        :param x: (B, 3, H, W) normalised images.
        :param outputs: stage names among ``res2 .. res5``; computation stops after the deepest one.
        """
        unknown = [s for s in outputs if s not in self.stages]
        if unknown:
            raise ValueError(f"backbone.py: unknown or dropped stages {unknown}; available {self.stages}")
        last = max(self.stages.index(s) for s in outputs)
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.stem_pad(x)))))
        out: dict[str, Tensor] = {}
        for s in self.stages[: last + 1]:
            x = getattr(self, _LAYER_OF[s])(x)
            if s == "res4":
                x = self.res4_pool(x)
            if s in outputs:
                out[s] = x
        return out


def _set_first_block_stride(layer: nn.Sequential, stride: int) -> None:
    block = layer[0]
    block.conv2.stride = (stride, stride)
    block.conv1.stride = (1, 1)
    if block.downsample is not None:
        block.downsample[0].stride = (stride, stride)


def _to_tf_style(backbone: ResNetBackbone) -> None:
    """Turn a torchvision ResNet into the Keras/TF DELF layout (see the module docstring)."""
    backbone.conv1.padding = (0, 0)
    backbone.maxpool.padding = 0
    for module in backbone.modules():
        if isinstance(module, nn.Conv2d) and module.bias is None:
            module.bias = nn.Parameter(torch.zeros(module.out_channels))
        elif isinstance(module, nn.BatchNorm2d):
            module.eps = 1e-3
    for name in ("layer1", "layer2", "layer3", "layer4"):
        layer = getattr(backbone, name, None)
        if layer is None:
            continue
        block = layer[0]
        stride = max(block.conv2.stride[0], block.conv1.stride[0])
        if block.downsample is not None:
            stride = max(stride, block.downsample[0].stride[0])
        block.conv1.stride, block.conv2.stride = (stride, stride), (1, 1)
