"""Margin classifiers for the ``classification`` regime of ``glocal train``: ArcFace and CosFace over
L2-normalised class weights, with a fixed or a learnable scale.

With ``cos theta_n = w_n^T f / (|w_n| |f|)`` and t the ground-truth class:

* ArcFace (Deng et al., CVPR 2019; DELG eq. 2, DOLG eq. 6-7): ``logit_t = s cos(theta_t + m)``,
  ``logit_n = s cos theta_n`` (n != t); the margin is skipped where ``theta_t + m > pi``
  (:class:`glocal.models.layers.ArcFace`, reused here).
* CosFace (Wang et al., CVPR 2018, eq. 4): ``logit_t = s (cos theta_t - m)``, ``logit_n = s cos theta_n``.

The loss is the cross-entropy of the logits. Settings of the papers: DELG m = 0.1 (ArcFace) with the scale
initialised to sqrt(2048) = 45.25 (the TF release's ``scale_factor_init``); DOLG m = 0.15, s = 30 (sec. 4.1);
ViTGaL m = 0.1, s = 30. CosFace's paper uses s = 64, m = 0.35 for faces. ``learn_scale``: s is a parameter
(kept positive as ``exp(log s)``), initialised to ``scale``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glocal.models.layers.arcface import ArcFace

MARGIN_LOSSES = ("arcface", "cosface")


class MarginHead(nn.Module):
    """ArcFace or CosFace classifier (module docstring).

    :param dim: feature dimension.
    :param num_classes: classes; the class weights are ``(num_classes, dim)``.
    :param kind: ``"arcface"`` or ``"cosface"``.
    :param margin: m (radians for ArcFace, cosine units for CosFace).
    :param scale: s (the initial value when ``learn_scale``).
    :param learn_scale: s is trained.
    """

    def __init__(self, dim: int, num_classes: int, kind: str, margin: float, scale: float,
                 learn_scale: bool = False) -> None:
        super().__init__()
        if kind not in MARGIN_LOSSES:
            raise ValueError(f"margins.py: loss must be one of {MARGIN_LOSSES}, got {kind!r}")
        if not scale > 0 or margin < 0:
            raise ValueError(f"margins.py: scale must be > 0 and margin >= 0, got scale {scale}, margin {margin}")
        self.kind, self.margin = kind, float(margin)
        # the ArcFace layer holds the class weights and the angular margin; the scale is applied here
        self.classifier = ArcFace(dim, num_classes, margin if kind == "arcface" else 0.0, 1.0)
        log_scale = torch.tensor(math.log(scale))
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def scale(self) -> Tensor:
        return self.log_scale.exp()

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        """(B, num_classes) logits; the margin is applied to the ``labels`` class when given."""
        if self.kind == "arcface":
            cos = self.classifier(features, labels)
        else:
            cos = self.classifier.cosine(features)
            if labels is not None and self.margin > 0:
                cos = cos - self.margin * F.one_hot(labels, cos.shape[1]).to(cos.dtype)
        return self.scale * cos

    def loss(self, features: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy of the margin logits."""
        return F.cross_entropy(self(features, labels), labels)

    def accuracy(self, features: Tensor, labels: Tensor) -> float:
        """Fraction of the batch whose nearest class weight (no margin) is its own."""
        return float((self.classifier.cosine(features).argmax(1) == labels).float().mean())
