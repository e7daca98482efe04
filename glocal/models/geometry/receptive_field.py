"""Receptive fields computed from the layers of a network, and feature-map locations mapped to pixels.

A feature at output index ``i`` of a chain of convolutions and poolings "looks at" the input pixels
``[start + i * stride, start + i * stride + size - 1]``; its centre is ``offset + i * stride`` with
``offset = start + (size - 1) / 2``. We get ``size``, ``stride`` and ``offset`` by walking the layers
from the input to the feature map (the recurrences of Araujo, Norris & Sim, "Computing receptive
fields of convolutional neural networks", Distill 2019, eq. 1 and 2, written for the centre):

    j_l = j_{l-1} * s_l
    r_l = r_{l-1} + (k'_l - 1) * j_{l-1}                      with k' = d (k - 1) + 1
    c_l = c_{l-1} + ((k'_l - 1) / 2 - p_l) * j_{l-1}

where ``p_l`` is the padding added *before* the first input element. Residual shortcuts do not change
the result for ResNets (their 1x1 projections have the same stride and no offset), so only the main
path of a residual block is walked.

The walk knows ``nn.Conv2d``, ``nn.MaxPool2d``, ``nn.AvgPool2d``, size-dependent padding layers (any
module with a ``pads(n) -> (before, after)`` method, e.g. TensorFlow ``'same'`` padding in
``glocal.models.backbones.resnet.SamePad2d``; a convolution with a ``same_pads(n, axis)`` method pads itself
that way), containers (``nn.Sequential``, ``nn.ModuleList``), torchvision
``BasicBlock`` / ``Bottleneck`` and any module with a ``receptive_path()`` method returning the modules
of its main path in order. Point-wise modules (batch norm, activations, identity, dropout) are skipped.
Anything else raises :class:`ReceptiveFieldError` rather than guessing.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from torch import nn

_POINTWISE = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm, nn.Identity, nn.Dropout,
    nn.Dropout2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.ELU,
)


class ReceptiveFieldError(ValueError):
    """A layer whose geometry the walk does not know, or a missing input size where one is needed."""


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field along one axis.

    :param size: number of input pixels seen by one output element.
    :param stride: distance in input pixels between two neighbouring output elements.
    :param offset: input coordinate of the centre of output element 0 (may be negative or x.5).
    """

    size: float
    stride: float
    offset: float

    def centers(self, n: int) -> npt.NDArray[np.float64]:
        """Centres, in input pixel coordinates, of output elements ``0 .. n-1``."""
        return self.offset + self.stride * np.arange(n, dtype=np.float64)

    @property
    def start(self) -> float:
        """First input pixel seen by output element 0."""
        return self.offset - (self.size - 1) / 2


def _pair(v: int | tuple[int, ...], axis: int) -> int:
    return int(v[axis]) if isinstance(v, tuple | list) else int(v)


def _is_padding(m: nn.Module) -> bool:
    """A size-dependent padding layer: has ``pads(n)`` and is not itself a convolution / pooling."""
    return callable(getattr(m, "pads", None)) and not isinstance(m, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d)


def _geometric_leaves(modules: Iterable[nn.Module]) -> Iterable[nn.Module]:
    """Flatten ``modules`` into the sequence of layers along the main path, input to output."""
    for m in modules:
        path = getattr(m, "receptive_path", None)
        if callable(path):
            yield from _geometric_leaves(path())
        elif isinstance(m, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d) or _is_padding(m):
            yield m
        elif isinstance(m, _POINTWISE):
            continue
        elif isinstance(m, nn.Sequential | nn.ModuleList):
            yield from _geometric_leaves(m)
        elif type(m).__name__ in ("Bottleneck", "BasicBlock") and hasattr(m, "conv2"):
            # torchvision residual blocks: main path only (the shortcut is geometry-neutral).
            convs = [m.conv1, m.conv2] + ([m.conv3] if hasattr(m, "conv3") else [])
            yield from convs
        else:
            raise ReceptiveFieldError(
                f"receptive_field.py: do not know the geometry of {type(m).__name__}; give it a "
                "receptive_path() method listing its main-path layers"
            )


def receptive_field(
    modules: Sequence[nn.Module] | nn.Module, axis: int = 0, input_length: int | None = None
) -> ReceptiveField:
    """Walk ``modules`` (input to output) and return the receptive field along ``axis`` (0 = y, 1 = x).

    Implements the recurrences in this module's docstring (Araujo et al. 2019, eq. 1-2).

    :param modules: the layers from the network input to the feature map, in order (containers allowed).
    :param axis: 0 for rows (height), 1 for columns (width); kernels may be non-square.
    :param input_length: input length along ``axis``; required only when the path holds a
        size-dependent padding layer (TF ``'same'`` padding). Also lets us check the output is non-empty.
    :raises ReceptiveFieldError: unknown layer, or a size-dependent layer without ``input_length``.
    """
    if isinstance(modules, nn.Module):
        modules = [modules]
    size, jump, center = 1.0, 1.0, 0.0
    n = input_length
    for layer in _geometric_leaves(modules):
        if _is_padding(layer):
            if n is None:
                raise ReceptiveFieldError(
                    f"receptive_field.py: {type(layer).__name__} (size-dependent padding) needs input_length"
                )
            before, after = layer.pads(n)
            center -= before * jump
            n += before + after
            continue
        same_pads = getattr(layer, "same_pads", None)
        if callable(same_pads):  # a convolution padding itself TF-'same' (size-dependent), e.g. EfficientNet's
            if n is None:
                raise ReceptiveFieldError(f"receptive_field.py: {type(layer).__name__} (TF 'same' padding) needs "
                                          "input_length")
            before, after = same_pads(n, axis)
            center -= before * jump
            n += before + after
        k = _pair(layer.kernel_size, axis)
        s = _pair(layer.stride if layer.stride is not None else layer.kernel_size, axis)
        d = _pair(getattr(layer, "dilation", 1), axis)
        pad = layer.padding
        k_eff = d * (k - 1) + 1
        if pad == "valid":
            p_before, p_total = 0, 0
        elif pad == "same":
            p_total = k_eff - 1
            p_before = p_total // 2
        else:
            p_before = _pair(pad, axis)
            p_total = 2 * p_before
        center += ((k_eff - 1) / 2 - p_before) * jump
        size += (k_eff - 1) * jump
        jump *= s
        if n is not None:
            ceil_mode = bool(getattr(layer, "ceil_mode", False))
            span = n + p_total - k_eff
            n = (-(-span // s) if ceil_mode else span // s) + 1
            if n <= 0:
                raise ReceptiveFieldError(f"receptive_field.py: input too small, {type(layer).__name__} gives no output")
    return ReceptiveField(size=size, stride=jump, offset=center)


def feature_centers_xy(rf_y: ReceptiveField, rf_x: ReceptiveField, height: int, width: int) -> npt.NDArray[np.float64]:
    """(height * width, 2) array of (x, y) input-pixel centres of a feature map, row-major order."""
    ys, xs = np.meshgrid(rf_y.centers(height), rf_x.centers(width), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)
