"""Generalized-mean (GeM) pooling (Radenovic, Tolias & Chum, TPAMI 2018; DOLG eq. 1).

    f_c = ( 1/|X| * sum_{x in X} max(x_c, eps)^p )^(1/p)

p = 1 is average pooling, p -> inf max pooling; DELG and DOLG use a fixed p = 3. Activations are
clamped to ``eps`` first (ReLU outputs are >= 0; the clamp keeps ``x^p`` and its gradient finite).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def gem(x: Tensor, p: float | Tensor = 3.0, eps: float = 1e-6) -> Tensor:
    """GeM over the spatial dimensions: (B, C, H, W) -> (B, C). DOLG eq. 1."""
    pooled = F.adaptive_avg_pool2d(x.clamp(min=eps).pow(p), 1).flatten(1)
    return pooled.pow(1.0 / p)


def average_pool(x: Tensor) -> Tensor:
    """Spatial mean: (B, C, H, W) -> (B, C)."""
    return x.mean(dim=(2, 3))


class GeM(nn.Module):
    """GeM pooling module; ``p`` fixed (a buffer) or learned (a parameter, ``learn_p=True``).

    :param p: the power (3 in DELG and DOLG).
    :param learn_p: make ``p`` a trainable parameter (as in Radenovic et al.); saved as ``p`` either way.
    :param eps: clamp floor.
    """

    def __init__(self, p: float = 3.0, learn_p: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        value = torch.tensor([float(p)])
        if learn_p:
            self.p = nn.Parameter(value)
        else:
            self.register_buffer("p", value)

    def forward(self, x: Tensor) -> Tensor:
        return gem(x, self.p, self.eps)

    def extra_repr(self) -> str:
        return f"p={float(self.p):.3g}, learn_p={isinstance(self.p, nn.Parameter)}"
