"""Training targets and losses of the FCOS landmark head (Tian et al., "FCOS: Fully Convolutional One-Stage
Object Detection", ICCV 2019).

Targets (FCOS section 3.1): a location (x, y) is positive when it lies inside a ground-truth box; its
regression target is (l*, t*, r*, b*) = (x - x1, y - y1, x2 - x, y2 - y) of that box, the smallest-area one
when it lies in several (FCOS's rule for ambiguous locations). A box containing no location at all (smaller
than the stride) gives its centre's nearest location as a positive (unless a smaller box already has it),
so that small boxes are learned too.

Loss (FCOS eq. 2, one class), summed over the batch:

* classification: focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, eq. 5)
  FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t), alpha = 0.25, gamma = 2, over every location, divided by
  the number of positives N_pos (at least 1);
* box: the generalised IoU loss 1 - GIoU (Rezatofighi et al., CVPR 2019, algorithm 2; FCOS used the IoU
  loss of UnitBox), GIoU = IoU - |C minus (A u B)| / |C| with C the smallest box enclosing A and B,
  averaged over positives;
* centerness: binary cross-entropy between the centerness logit and
  centerness* = sqrt(min(l*, r*) / max(l*, r*) * min(t*, b*) / max(t*, b*)) (FCOS eq. 3), averaged over
  positives.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0


def focal_loss(logits: Tensor, targets: Tensor, alpha: float = FOCAL_ALPHA, gamma: float = FOCAL_GAMMA) -> Tensor:
    """Summed focal loss (Lin et al. ICCV 2017, eq. 5) of logits against 0 / 1 ``targets``."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # -log(p_t)
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * (1 - p_t) ** gamma * ce).sum()


def giou_loss(pred: Tensor, target: Tensor) -> Tensor:
    """(N,) 1 - GIoU of matching (N, 4) x1, y1, x2, y2 boxes (Rezatofighi et al., CVPR 2019)."""
    area_p = (pred[:, 2] - pred[:, 0]).clamp(min=0) * (pred[:, 3] - pred[:, 1]).clamp(min=0)
    area_t = (target[:, 2] - target[:, 0]).clamp(min=0) * (target[:, 3] - target[:, 1]).clamp(min=0)
    inter_wh = (torch.minimum(pred[:, 2:], target[:, 2:]) - torch.maximum(pred[:, :2], target[:, :2])).clamp(min=0)
    inter = inter_wh[:, 0] * inter_wh[:, 1]
    union = (area_p + area_t - inter).clamp(min=1e-6)
    hull_wh = (torch.maximum(pred[:, 2:], target[:, 2:]) - torch.minimum(pred[:, :2], target[:, :2])).clamp(min=0)
    hull = (hull_wh[:, 0] * hull_wh[:, 1]).clamp(min=1e-6)
    return 1.0 - (inter / union - (hull - union) / hull)


def centerness_target(ltrb: Tensor) -> Tensor:
    """(N,) FCOS eq. 3 of (N, 4) l, t, r, b distances (negative ones count as 0)."""
    d = ltrb.clamp(min=0)
    lr = d[:, [0, 2]]
    tb = d[:, [1, 3]]
    ratio = (lr.min(dim=1).values / lr.max(dim=1).values.clamp(min=1e-6)) \
        * (tb.min(dim=1).values / tb.max(dim=1).values.clamp(min=1e-6))
    return ratio.sqrt()


def assign(points: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """(positive (P,) bool, target boxes (P, 4)) for locations ``points`` (P, 2) and ``boxes`` (K, 4) (see the
    module docstring; target rows of negatives are meaningless)."""
    n = len(points)
    if len(boxes) == 0:
        return torch.zeros(n, dtype=torch.bool, device=points.device), points.new_zeros((n, 4))
    x, y = points[:, 0:1], points[:, 1:2]
    ltrb = torch.stack([x - boxes[None, :, 0], y - boxes[None, :, 1], boxes[None, :, 2] - x, boxes[None, :, 3] - y],
                       dim=2)  # (P, K, 4)
    inside = ltrb.min(dim=2).values > 0
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None, :].expand(n, -1)
    area = torch.where(inside, area, torch.full_like(area, float("inf")))
    best_area, best = area.min(dim=1)
    positive = inside.any(dim=1)
    empty = ~inside.any(dim=0)
    if empty.any():  # boxes holding no location: their centre's nearest location, unless a smaller box has it
        centres = (boxes[empty, :2] + boxes[empty, 2:]) / 2
        nearest = torch.cdist(centres, points).argmin(dim=1)
        box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        for k, p in zip(torch.nonzero(empty).reshape(-1).tolist(), nearest.tolist()):
            if box_area[k] < best_area[p]:
                positive[p], best[p], best_area[p] = True, k, box_area[k]
    return positive, boxes[best]


def fcos_loss(cls_logits: Tensor, distances: Tensor, ctr_logits: Tensor, points: Tensor,
              targets: list[Tensor]) -> dict[str, Tensor]:
    """The three loss terms of the module docstring for a batch.

    :param cls_logits: (B, P) logits; ``ctr_logits``: (B, P); ``distances``: (B, P, 4) l, t, r, b.
    :param points: (P, 2) locations shared by the batch (:func:`glocal.models.detection.decode.locations`).
    :param targets: per image, its (K, 4) boxes in the input's pixels.
    """
    assigned = [assign(points, t.to(points.dtype)) for t in targets]
    positive = torch.stack([a[0] for a in assigned])  # (B, P)
    target_boxes = torch.stack([a[1] for a in assigned])  # (B, P, 4)
    n_pos = int(positive.sum())
    cls = focal_loss(cls_logits, positive.to(cls_logits.dtype)) / max(n_pos, 1)
    if n_pos == 0:
        zero = distances.sum() * 0.0 + ctr_logits.sum() * 0.0
        return {"classification": cls, "box": zero, "centerness": zero.clone()}
    p = points[None].expand(len(targets), -1, -1)[positive]
    d = distances[positive]
    pred = torch.cat([p - d[:, :2], p + d[:, 2:]], dim=1)
    tb = target_boxes[positive]
    ltrb = torch.cat([p - tb[:, :2], tb[:, 2:] - p], dim=1)
    ctr = F.binary_cross_entropy_with_logits(ctr_logits[positive], centerness_target(ltrb), reduction="mean")
    return {"classification": cls, "box": giou_loss(pred, tb).mean(), "centerness": ctr}
