"""ALIKED's keypoint detection from a score map (DKD, Zhao et al., IEEE TIM 2023, sec. III-B; the same
detector as ALIKE, TMM 2022), at inference:

1. non-maximum suppression in a (2r+1) x (2r+1) window (:func:`simple_nms`: local maxima, then two rounds
   that restore maxima outside the suppressed neighbourhoods, as in SuperPoint's ``simple_nms``);
2. the border is cleared (``r + 1`` rows / columns at the top and left, ``r`` at the bottom and right);
3. maxima above ``threshold`` are kept (none above: those above the map's mean), strongest ``max_keypoints``;
4. each is refined by a soft-argmax over its window (temperature ``t = 0.1``):
   ``p = p0 + sum_i softmax_i((s_i - max s) / t) * (x_i, y_i)`` for the window offsets ``(x_i, y_i)``;
5. its score is the map bilinearly interpolated at the refined position.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: soft-argmax temperature of the release
TEMPERATURE = 0.1


def _max_pool(x: Tensor, radius: int) -> Tensor:
    return F.max_pool2d(x, kernel_size=2 * radius + 1, stride=1, padding=radius)


def simple_nms(scores: Tensor, radius: int) -> Tensor:
    """``scores`` (B, 1, H, W) with every value that is not a maximum of its window set to 0."""
    zeros = torch.zeros_like(scores)
    is_max = scores == _max_pool(scores, radius)
    for _ in range(2):
        suppressed = _max_pool(is_max.float(), radius) > 0
        rest = torch.where(suppressed, zeros, scores)
        is_max = is_max | ((rest == _max_pool(rest, radius)) & ~suppressed)
    return torch.where(is_max, scores, zeros)


def detect_keypoints(scores: Tensor, radius: int, threshold: float, max_keypoints: int,
                     temperature: float = TEMPERATURE) -> tuple[Tensor, Tensor]:
    """Keypoints of a score map (H, W): ((N, 2) float x, y in map pixels, pixel centres at integers;
    (N,) scores), strongest first (ties: row-major order)."""
    h, w = scores.shape
    nms = simple_nms(scores[None, None], radius)[0, 0]
    nms[: radius + 1, :] = 0
    nms[:, : radius + 1] = 0
    nms[max(h - radius, 0):, :] = 0
    nms[:, max(w - radius, 0):] = 0
    flat = nms.flatten()
    index = torch.nonzero(flat > threshold)[:, 0]
    if index.numel() == 0:
        index = torch.nonzero(flat > scores.mean())[:, 0]
    if index.numel() > max_keypoints:
        # stable: equal scores keep their row-major order
        order = torch.sort(flat[index], descending=True, stable=True).indices[:max_keypoints]
        index = index[order.sort().values]
    if index.numel() == 0:
        return scores.new_zeros((0, 2)), scores.new_zeros(0)
    ys, xs = index // w, index % w
    # soft-argmax in the (2r+1)^2 window around each maximum (zeros beyond the map)
    padded = F.pad(scores, (radius, radius, radius, radius))
    steps = torch.arange(-radius, radius + 1, device=scores.device)
    dy, dx = torch.meshgrid(steps, steps, indexing="ij")
    dy, dx = dy.flatten(), dx.flatten()
    window = padded[ys[:, None] + radius + dy[None], xs[:, None] + radius + dx[None]]  # (N, (2r+1)^2)
    weights = torch.softmax((window - window.max(dim=1, keepdim=True).values) / temperature, dim=1)
    offsets = torch.stack((dx, dy), dim=1).to(scores.dtype)
    xy = torch.stack((xs, ys), dim=1).to(scores.dtype) + weights @ offsets
    # the score at the refined position (bilinear, pixel centres at integers)
    norm = scores.new_tensor([max(w - 1, 1), max(h - 1, 1)])
    grid = (2 * xy / norm - 1).view(1, 1, -1, 2)
    strength = F.grid_sample(scores[None, None], grid, mode="bilinear", align_corners=True)[0, 0, 0]
    order = torch.sort(strength, descending=True, stable=True).indices
    return xy[order], strength[order]
