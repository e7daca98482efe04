"""Training losses of HOW and FIRe.

* HOW eq. 2 (FIRe eq. 2): contrastive loss on global descriptors (the norm-weighted sum of whitened
  local features, HOW eq. 1, :meth:`glocal.models.how.HowNet.global_descriptor`):
  ||g - g+||^2 + sum_j [mu - ||g - g_j-||^2]+.
* FIRe eq. 7: a Super-feature pair (s, s') of a positive image pair is *eligible* when s and s' are
  reciprocal nearest neighbours, have the same ID, and pass Lowe's ratio test
  ||s - s'|| / ||s' - n(s', S minus {s})|| <= tau, tau = 0.9. The paper prints ">= tau"; that would keep the
  ambiguous matches the text says the test removes, and the reference code compares with "<=", so we
  use "<=" (the reference code divides by an *index* instead of the second distance; we divide by the
  distance, as the equation says).
* FIRe eq. 8: L_super = sum over eligible pairs of ||s - s+||^2 + sum over the negatives' Super-features
  with the same ID [mu' - ||s - n||^2]+, mu' = 1.1, weight 0.02.
* FIRe eq. 9: L_attn(x) = 1/(N(N-1)) sum_{i != j} cos(alpha_i, alpha_j) over the N attention maps of an
  image: 0 for maps with disjoint supports, 1 when all maps are identical; weight 0.1, summed over the
  images of a tuple (as the reference training does).

``form="paper"`` (default) uses the squared distances of the equations; ``form="cirtorch"`` the
cirtorch ``ContrastiveLoss`` the reference code trains with: 0.5 d+^2 + 0.5 [mu - d-]+^2 on plain
distances d (same margins, different geometry: the margins were tuned for that form).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Form = Literal["paper", "cirtorch"]


def contrastive_terms(anchor: Tensor, positive: Tensor, negatives: Tensor, margin: float, form: Form = "paper") -> Tensor:
    """Sum over rows of the contrastive loss of HOW eq. 2 / FIRe eq. 8.

    :param anchor: (P, d).
    :param positive: (P, d) matched to ``anchor`` row by row.
    :param negatives: (P, n, d) negatives of every anchor (n may be 0).
    :param margin: mu.
    :param form: ``"paper"`` (squared distances) or ``"cirtorch"`` (module docstring).
    """
    if form not in ("paper", "cirtorch"):
        raise ValueError(f"fire_losses.py: form must be 'paper' or 'cirtorch', got {form!r}")
    pos_sq = (anchor - positive).pow(2).sum(-1)
    neg_sq = (anchor.unsqueeze(1) - negatives).pow(2).sum(-1)
    if form == "paper":
        return pos_sq.sum() + F.relu(margin - neg_sq).sum()
    neg = (neg_sq + 1e-12).sqrt()
    return 0.5 * pos_sq.sum() + 0.5 * F.relu(margin - neg).pow(2).sum()


def global_contrastive_loss(descriptors: Tensor, margin: float = 0.8, form: Form = "paper") -> Tensor:
    """HOW eq. 2 for one tuple of global descriptors (B, k): row 0 query, row 1 positive, rows 2.. the
    negatives. Rows should be L2-normalised (HOW eq. 1). Margin 0.8 as in the reference HOW training."""
    if descriptors.ndim != 2 or descriptors.shape[0] < 2:
        raise ValueError(f"fire_losses.py: expected (2 + n, k) tuple descriptors, got {tuple(descriptors.shape)}")
    q = descriptors[:1]
    return contrastive_terms(q, descriptors[1:2], descriptors[2:].unsqueeze(0), margin, form)


@torch.no_grad()
def select_super_feature_pairs(
    query: Tensor, positive: Tensor, ratio_threshold: float = 0.9, reciprocal: bool = True,
    ratio_test: bool = True, same_id: bool = True,
) -> Tensor:
    """FIRe eq. 7: eligible pairs between the Super-features of a positive image pair.

    Candidates are (n(s', S), s') for every s' in S'; each constraint can be switched off (the
    paper's ablation, Table 5).

    :param query: (N, d) Super-features S of the query image (ID = row).
    :param positive: (M, d) Super-features S' of the positive image.
    :param ratio_threshold: tau of Lowe's test, kept when d(s, s') <= tau * d(s', second neighbour in S).
    :returns: (P, 2) int64 pairs (query ID, positive ID), sorted by positive ID.
    """
    if query.ndim != 2 or positive.ndim != 2 or query.shape[1] != positive.shape[1]:
        raise ValueError(f"fire_losses.py: expected (N, d) and (M, d), got {tuple(query.shape)}, {tuple(positive.shape)}")
    dist = torch.cdist(query.float(), positive.float())
    cols = torch.arange(dist.shape[1], device=dist.device)
    rows = dist.argmin(dim=0)
    keep = torch.ones_like(cols, dtype=torch.bool)
    if reciprocal:
        keep &= dist.argmin(dim=1)[rows] == cols
    if same_id:
        keep &= rows == cols
    if ratio_test and dist.shape[0] > 1:
        first = dist[rows, cols]
        second = dist.clone()
        second[rows, cols] = float("inf")
        keep &= first <= ratio_threshold * second.min(dim=0).values
    return torch.stack([rows[keep], cols[keep]], dim=1)


def super_feature_loss(
    query: Tensor, positive: Tensor, negatives: Tensor | Sequence[Tensor], margin: float = 1.1,
    ratio_threshold: float = 0.9, form: Form = "paper", pairs: Tensor | None = None, **constraints: bool,
) -> Tensor:
    """FIRe eq. 8 (unweighted) on L2-normalised Super-features.

    :param query: (N, d) Super-features of the query image.
    :param positive: (N, d) of the positive image.
    :param negatives: (n, N, d) (or a list of (N, d)) of the negative images.
    :param margin: mu' (1.1).
    :param pairs: eligible pairs; by default :func:`select_super_feature_pairs` (``constraints`` are
        passed to it).
    :returns: a scalar, 0 (still attached to the graph) when no pair is eligible.
    """
    q, p = F.normalize(query, dim=-1), F.normalize(positive, dim=-1)
    negs = torch.stack(list(negatives)) if not isinstance(negatives, Tensor) else negatives
    negs = F.normalize(negs, dim=-1) if negs.numel() else negs.reshape(0, *q.shape)
    if pairs is None:
        pairs = select_super_feature_pairs(q, p, ratio_threshold, **constraints)
    if len(pairs) == 0:
        return q.sum() * 0.0
    ids, pos_ids = pairs[:, 0], pairs[:, 1]
    return contrastive_terms(q[ids], p[pos_ids], negs[:, ids].transpose(0, 1), margin, form)


def attention_decorrelation_loss(attention: Tensor, batched: bool = True,
                                 reduction: Literal["sum", "mean"] = "sum") -> Tensor:
    """FIRe eq. 9 (unweighted): mean off-diagonal cosine similarity of the N attention maps of an image.

    :param attention: (B, N, ...) maps of B images when ``batched``, else (N, ...) maps of one image;
        the trailing axes (h, w or L) are the locations.
    :param reduction: over the images of the batch, ``"sum"`` (reference training) or ``"mean"``.
    """
    maps = attention if batched else attention.unsqueeze(0)
    if maps.ndim < 3:
        raise ValueError(f"fire_losses.py: expected (B, N, locations...) attention, got {tuple(attention.shape)}")
    maps = maps.flatten(2)
    n = maps.shape[1]
    if n < 2:
        raise ValueError(f"fire_losses.py: eq. 9 needs at least 2 attention maps, got {n}")
    unit = F.normalize(maps, dim=-1)
    corr = torch.bmm(unit, unit.transpose(1, 2))
    off_diag = corr.sum(dim=(1, 2)) - corr.diagonal(dim1=1, dim2=2).sum(-1)
    per_image = off_diag / (n * (n - 1))
    return per_image.sum() if reduction == "sum" else per_image.mean()


@dataclass(frozen=True)
class FireLossConfig:
    """FIRe training loss settings (paper sec. 4 defaults).

    :param super_weight: weight of L_super (0.02).
    :param attention_weight: weight of L_attn (0.1).
    :param margin: mu' (1.1).
    :param ratio_threshold: tau (0.9).
    :param form: contrastive form, ``"paper"`` or ``"cirtorch"``.
    :param reciprocal: eq. 7 reciprocity constraint.
    :param ratio_test: eq. 7 Lowe ratio test.
    :param same_id: eq. 7 same-ID constraint.
    """

    super_weight: float = 0.02
    attention_weight: float = 0.1
    margin: float = 1.1
    ratio_threshold: float = 0.9
    form: Form = "paper"
    reciprocal: bool = True
    ratio_test: bool = True
    same_id: bool = True


@dataclass(frozen=True)
class FireLosses:
    """Weighted total and its parts for one tuple; ``num_pairs`` = |P| of eq. 7."""

    total: Tensor
    super_loss: Tensor
    attention_loss: Tensor
    num_pairs: int


def fire_tuple_loss(descriptors: Tensor, attention: Tensor | Sequence[Tensor],
                    config: FireLossConfig | None = None) -> FireLosses:
    """Loss of one training tuple: weight_s * L_super (eq. 8) + weight_a * sum over images of L_attn (eq. 9).

    :param descriptors: (2 + n, N, k) Super-features of query, positive and n negatives (eq. 6).
    :param attention: (2 + n, N, h, w) (or (2 + n, N, L)) final attention maps of the same images, or one
        (N, h_i, w_i) tensor per image when the images have different sizes (training keeps each image's own).
    """
    config = config or FireLossConfig()
    if descriptors.ndim != 3 or descriptors.shape[0] < 2:
        raise ValueError(f"fire_losses.py: expected (2 + n, N, k) tuple descriptors, got {tuple(descriptors.shape)}")
    pairs = select_super_feature_pairs(descriptors[0], descriptors[1], config.ratio_threshold,
                                       reciprocal=config.reciprocal, ratio_test=config.ratio_test,
                                       same_id=config.same_id)
    l_super = super_feature_loss(descriptors[0], descriptors[1], descriptors[2:], config.margin,
                                 form=config.form, pairs=pairs)
    if isinstance(attention, Tensor):
        l_attn = attention_decorrelation_loss(attention)
    else:
        l_attn = torch.stack([attention_decorrelation_loss(a, batched=False) for a in attention]).sum()
    total = config.super_weight * l_super + config.attention_weight * l_attn
    return FireLosses(total, l_super, l_attn, len(pairs))
