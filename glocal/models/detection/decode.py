"""From the head's maps to boxes: locations, decoding, greedy non-maximum suppression (torch only).

Location (i, j) of a stride-s map sits at input pixel (x, y) = (floor(s / 2) + j s, floor(s / 2) + i s)
(FCOS, Tian et al. ICCV 2019, section 3.1). Its box is (x - l, y - t, x + r, y + b) and its score the
geometric mean sqrt(sigmoid(cls) * sigmoid(centerness)): FCOS ranks detections by the product of the two
(section 3.3); the square root keeps the score on the scale of a probability, so the Detect-to-Retrieve
threshold (0.1) keeps its meaning.
"""
from __future__ import annotations

import torch
from torch import Tensor


def locations(height: int, width: int, stride: int, device: torch.device | str = "cpu") -> Tensor:
    """(height * width, 2) x, y input-pixel centres of a stride-``stride`` map, row-major."""
    ys = torch.arange(height, device=device, dtype=torch.float32) * stride + stride // 2
    xs = torch.arange(width, device=device, dtype=torch.float32) * stride + stride // 2
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)


def box_area(boxes: Tensor) -> Tensor:
    """Areas of (N, 4) x1, y1, x2, y2 boxes (0 for inverted ones)."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """(N, M) intersection over union of (N, 4) and (M, 4) x1, y1, x2, y2 boxes."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / union.clamp(min=1e-9)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, limit: int | None = None) -> Tensor:
    """Greedy non-maximum suppression: indices of the kept boxes, best score first.

    Take the best remaining box, drop every remaining box whose IoU with it exceeds ``iou_threshold``,
    repeat; stop after ``limit`` boxes when given.
    """
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    overlap = (box_iou(boxes[order], boxes[order]) > iou_threshold).cpu()
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep: list[int] = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        if limit is not None and len(keep) >= limit:
            break
        suppressed |= overlap[i]
    return order[torch.tensor(keep, dtype=torch.int64, device=order.device)]


def decode(cls_logits: Tensor, distances: Tensor, ctr_logits: Tensor, points: Tensor, image_size: tuple[int, int],
           score_threshold: float, nms_iou: float = 0.5, pre_nms_top_k: int = 1000,
           max_boxes: int | None = 100) -> tuple[Tensor, Tensor]:
    """Boxes (R, 4) and scores (R,) of one image, best first, in the frame of its input.

    :param cls_logits: (P,) classification logits; ``ctr_logits``: (P,) centerness logits.
    :param distances: (P, 4) l, t, r, b; ``points``: (P, 2) the locations (:func:`locations`).
    :param image_size: (height, width) of the image inside the (possibly padded) input: locations outside it
        are ignored and boxes are clipped to it.
    :param score_threshold: keep scores above this (see the module docstring for the score).
    """
    h, w = image_size
    scores = torch.sqrt(torch.sigmoid(cls_logits) * torch.sigmoid(ctr_logits))
    valid = (scores > score_threshold) & (points[:, 0] < w) & (points[:, 1] < h)
    idx = torch.nonzero(valid).reshape(-1)
    if len(idx) > pre_nms_top_k:
        idx = idx[torch.topk(scores[idx], pre_nms_top_k).indices]
    p, d = points[idx], distances[idx]
    boxes = torch.cat([p - d[:, :2], p + d[:, 2:]], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    keep = nms(boxes, scores[idx], nms_iou, max_boxes)
    return boxes[keep], scores[idx][keep]
