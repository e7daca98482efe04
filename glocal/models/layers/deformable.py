"""Deformable convolution (Dai et al., "Deformable Convolutional Networks", ICCV 2017) in plain PyTorch.

    y(p0) = sum_k w_k * x(p0 + p_k + dp_k)                                              (Dai et al., eq. 2)

``p_k`` runs over the regular kernel grid, ``dp_k`` is a learned per-pixel offset and ``x(.)`` is bilinear
interpolation with zeros outside the map (eq. 3-4). The offsets use torchvision's ``deform_conv2d`` layout,
``(B, 2 * kh * kw, H_out, W_out)`` holding ``(dy_k, dx_k)`` pairs with ``k`` row-major over the kernel, so
weights trained with that operator load unchanged. Torchvision is not needed: the sampling is one
:func:`torch.nn.functional.grid_sample` call over all kernel taps, then one matrix product. Stride 1 and
dilation 1 only (what ALIKED uses).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def deform_conv2d(x: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None, padding: int = 1) -> Tensor:
    """Deformable convolution of ``x`` (B, C, H, W) with ``weight`` (O, C, kh, kw), stride 1.

    :param offset: (B, 2 * kh * kw, H_out, W_out), ``(dy, dx)`` per kernel tap (torchvision's layout).
    :returns: (B, O, H_out, W_out) with ``H_out = H + 2 * padding - kh + 1``.
    """
    b, c, h, w = x.shape
    o, c_w, kh, kw = weight.shape
    if c_w != c:
        raise ValueError(f"deformable.py: weight expects {c_w} input channels, got {c}")
    ho, wo = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
    taps = kh * kw
    if offset.shape != (b, 2 * taps, ho, wo):
        raise ValueError(f"deformable.py: offset must be {(b, 2 * taps, ho, wo)}, got {tuple(offset.shape)}")
    off = offset.view(b, taps, 2, ho, wo).to(x.dtype)
    ky = torch.arange(kh, device=x.device, dtype=x.dtype).repeat_interleave(kw).view(1, taps, 1, 1)
    kx = torch.arange(kw, device=x.device, dtype=x.dtype).repeat(kh).view(1, taps, 1, 1)
    rows = torch.arange(ho, device=x.device, dtype=x.dtype).view(1, 1, ho, 1) - padding
    cols = torch.arange(wo, device=x.device, dtype=x.dtype).view(1, 1, 1, wo) - padding
    py = rows + ky + off[:, :, 0]  # (B, taps, H_out, W_out), input pixel coordinates
    px = cols + kx + off[:, :, 1]
    # pixel centres at integers -> grid_sample's align_corners=False coordinates ((2p + 1) / size - 1);
    # safe for maps one pixel wide, and out-of-map corners read zeros as in eq. 3
    grid = torch.stack(((2 * px + 1) / w - 1, (2 * py + 1) / h - 1), dim=-1).view(b, taps * ho, wo, 2)
    sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    sampled = sampled.view(b, c * taps, ho * wo)  # channel-major, then tap: the order of weight.view(O, C*taps)
    y = torch.matmul(weight.reshape(o, c * taps), sampled).view(b, o, ho, wo)
    if bias is not None:
        y = y + bias.view(1, o, 1, 1)
    return y


class DeformableConv2d(nn.Module):
    """A deformable 3x3 convolution whose offsets come from a regular convolution of the same input.

    Parameters: ``offset_conv`` (C -> 2 * k * k, with bias) and ``regular_conv`` (the kernel ``w``; its
    bias optional). Offsets are clamped to a quarter of the map's longer side, as in ALIKED.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1,
                 bias: bool = False) -> None:
        super().__init__()
        self.padding = padding
        self.offset_conv = nn.Conv2d(in_channels, 2 * kernel_size * kernel_size, kernel_size, padding=padding, bias=True)
        self.regular_conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        limit = max(x.shape[-2:]) / 4.0
        offset = self.offset_conv(x).clamp(-limit, limit)
        return deform_conv2d(x, offset, self.regular_conv.weight, self.regular_conv.bias, self.padding)
