"""DOLG's multi-atrous module (Yang et al., ICCV 2021, sec. 3.2 and Fig. 3; after ASPP, Chen et al. 2017).

Branches on the same input, concatenated along channels, then fused by a 1x1 convolution + ReLU:

* three 3x3 convolutions with dilation rates (6, 12, 18) ("we follow ASPP", DOLG sec. 5), ``branch``
  channels each, padding = rate so the map keeps its size;
* a global-average-pooling branch: GAP -> 1x1 conv -> ReLU, broadcast back to every location;
* optionally ASPP's plain 1x1 branch (``pointwise_branch=True``). DOLG's text names only the three
  dilated convolutions and the pooling branch, so it is off by default; ASPP (and the ASPP class of the
  public PyTorch DOLG port, where the module is commented out) has it.

Defaults: 1024 -> 4 x 512 -> 1024 channels (as the DOLG port's ASPP).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class MultiAtrous(nn.Module):
    """Multi-atrous block: (B, C_in, H, W) -> (B, C_out, H, W).

    :param in_channels: input channels (1024 for ResNet res4).
    :param out_channels: output channels after the 1x1 fusion.
    :param branch_channels: channels of every branch.
    :param rates: dilation rates of the 3x3 branches.
    :param pointwise_branch: add ASPP's 1x1 branch.
    """

    def __init__(self, in_channels: int = 1024, out_channels: int = 1024, branch_channels: int = 512,
                 rates: Sequence[int] = (6, 12, 18), pointwise_branch: bool = False) -> None:
        super().__init__()
        self.rates = tuple(int(r) for r in rates)
        self.pointwise = nn.Conv2d(in_channels, branch_channels, 1) if pointwise_branch else None
        self.dilated = nn.ModuleList(
            nn.Conv2d(in_channels, branch_channels, 3, padding=r, dilation=r) for r in self.rates
        )
        self.image_pool = nn.Conv2d(in_channels, branch_channels, 1)
        n_branches = len(self.rates) + 1 + int(pointwise_branch)
        self.fuse = nn.Conv2d(n_branches * branch_channels, out_channels, 1)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        pooled = self.relu(self.image_pool(x.mean(dim=(2, 3), keepdim=True))).expand(-1, -1, h, w)
        branches = [pooled]
        if self.pointwise is not None:
            branches.append(self.pointwise(x))
        branches.extend(conv(x) for conv in self.dilated)
        return self.relu(self.fuse(torch.cat(branches, dim=1)))
