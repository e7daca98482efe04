"""Neck and head of the landmark detector.

:class:`TopDownNeck` merges a trunk's maps into one map at the finest stride, as the top-down pathway of a
feature pyramid (Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017, section 3):
P_coarsest = L(C_coarsest), P_i = L(C_i) + upsample_2x(P_{i+1}) with 1x1 lateral convolutions L, then a
3x3 convolution on the finest P. One level suffices here: the detector has one class and the Google
Landmark Boxes have at most one box per image (Detect-to-Retrieve, section 3).

:class:`FcosHead` is the head of FCOS (Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection",
ICCV 2019, section 3.1 and 3.3): a classification tower and a regression tower (``depth`` 3x3 convolutions
with group normalisation and ReLU each), then per location

* one classification logit (class "landmark"; bias -log((1 - pi) / pi), pi = 0.01, so that every location
  starts as background, Lin et al. ICCV 2017 section 4.1),
* four distances l, t, r, b from the location to the box sides, d = stride * exp(s * raw) with a learned
  scalar s (FCOS section 3.2, "exp(s_i x)"), clamped to avoid overflow,
* one centerness logit, on the regression tower (FCOS section 3.3; its later version moved it there).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: largest exponent of the distance parameterisation (exp(8) = 2981 strides)
MAX_LOG_DISTANCE = 8.0
PRIOR_PROBABILITY = 0.01


def _groups(channels: int) -> int:
    for g in (32, 16, 8, 4, 2):
        if channels % g == 0 and channels // g >= 4:
            return g
    return 1


class TopDownNeck(nn.Module):
    """Trunk maps (finest first) -> one ``width``-channel map at the finest stride."""

    def __init__(self, channels: tuple[int, ...], width: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.output = nn.Conv2d(width, width, 3, padding=1)
        for conv in [*self.lateral, self.output]:
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    def forward(self, maps: list[Tensor]) -> Tensor:
        p = self.lateral[-1](maps[-1])
        for lateral, c in zip(reversed(self.lateral[:-1]), reversed(maps[:-1])):
            p = lateral(c) + F.interpolate(p, size=c.shape[-2:], mode="nearest")
        return self.output(p)


def _tower(width: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(_groups(width), width), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class FcosHead(nn.Module):
    """(B, width, h, w) -> classification logits (B, 1, h, w), distances (B, 4, h, w) in input pixels
    (l, t, r, b), centerness logits (B, 1, h, w); see the module docstring."""

    def __init__(self, width: int, depth: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.cls_tower = _tower(width, depth)
        self.box_tower = _tower(width, depth)
        self.cls_logits = nn.Conv2d(width, 1, 3, padding=1)
        self.box_pred = nn.Conv2d(width, 4, 3, padding=1)
        self.centerness = nn.Conv2d(width, 1, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(()))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c = self.cls_tower(x)
        b = self.box_tower(x)
        log_d = (self.scale * self.box_pred(b)).clamp(max=MAX_LOG_DISTANCE)
        return self.cls_logits(c), self.stride * torch.exp(log_d), self.centerness(b)
