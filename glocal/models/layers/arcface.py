"""ArcFace (additive angular margin) classifier head (Deng et al., CVPR 2019; DOLG eq. 6-7).

logit_n = gamma * cos(theta_n + m)   for the ground-truth class n = t (only while theta_t + m <= pi),
logit_n = gamma * cos(theta_n)       otherwise,
with cos(theta_n) = w_n^T f / (|w_n| |f|). The loss is the cross-entropy of these logits.

Settings: DELG m = 0.1, gamma = 45.25 = sqrt(2048) (the TF release's ``scale_factor_init``, kept fixed);
DOLG m = 0.15, gamma = 30. Like the TF DELG code, the margin is skipped when theta_t > pi - m, where
adding it would *raise* the cosine. Without labels (inference) no margin is applied.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ArcFace(nn.Module):
    """Normalised linear classifier with an additive angular margin.

    :param dim: feature dimension.
    :param num_classes: number of classes; ``weight`` is (num_classes, dim).
    :param margin: angular margin m in radians.
    :param scale: logit scale gamma.
    """

    def __init__(self, dim: int, num_classes: int, margin: float, scale: float) -> None:
        super().__init__()
        if num_classes <= 0:
            raise ValueError(f"arcface.py: num_classes must be positive, got {num_classes}")
        self.margin, self.scale = float(margin), float(scale)
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.xavier_uniform_(self.weight)

    def cosine(self, features: Tensor) -> Tensor:
        """(B, num_classes) cosine similarities between L2-normalised features and class weights."""
        return F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1)).clamp(-1.0, 1.0)

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        """Scaled logits (B, num_classes); the margin is applied to the ``labels`` class when given."""
        cos = self.cosine(features)
        if labels is not None and self.margin > 0:
            target = cos.gather(1, labels.view(-1, 1))
            sin = torch.sqrt((1.0 - target * target).clamp(min=1e-7))
            with_margin = target * math.cos(self.margin) - sin * math.sin(self.margin)  # cos(theta + m)
            # keep the plain cosine where theta > pi - m (TF DELG's rule)
            with_margin = torch.where(target >= math.cos(math.pi - self.margin), with_margin, target)
            cos = cos.scatter(1, labels.view(-1, 1), with_margin)
        return self.scale * cos

    def loss(self, features: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy of the margin logits (DOLG eq. 6)."""
        return F.cross_entropy(self(features, labels), labels)

    def extra_repr(self) -> str:
        n, d = self.weight.shape
        return f"dim={d}, num_classes={n}, margin={self.margin}, scale={self.scale}"
