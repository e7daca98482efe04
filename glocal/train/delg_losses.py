"""DELG's local-head losses (Cao, Araujo & Sim, ECCV 2020, sec. 3.2-3.3), for the ``classification`` regime.

With S the backbone's stride-16 map (res4, C channels) *with the gradient stopped* (``S.detach()``: "no
gradient from the local branch into the backbone"), the autoencoder's reduced map ``L = T(S)`` (the local
descriptors) and its reconstruction ``S' = T'(L)`` (1x1 convolution + ReLU), the attention ``A(S) >= 0``:

* reconstruction (DELG eq. 4): ``L_r = 1 / (H W C) sum_h |S'_h - S_h|^2`` (mean squared error);
* attention (DELG eq. 5): the attention-weighted pool of the L2-normalised reconstructed features
  ``a = 1 / (H W) sum_h A(S_h) S'_h / |S'_h|`` is classified by a linear layer (w_k, b_k), and
  ``L_a = -log( exp(w_t^T a + b_t) / sum_k exp(w_k^T a + b_k) )`` (cross-entropy, t the label);
  the pooling follows the TF release (``targets`` = the decoder output, normalised, averaged);
* the total (DELG sec. 3.3): ``L = L_g + lambda L_r + beta L_a`` with lambda = 10 and beta = 1; L_g is the
  ArcFace loss of the global head (:mod:`glocal.train.margins`). Source of the weights: the project's method
  notes (reconstruction weight 10) and the TF release's ``reconstruction_loss_weight`` /
  ``attention_loss_weight`` defaults, as in :class:`glocal.models.delg.DelgModelConfig` (the paper's main text
  is not among the project's papers, only its appendix; the equation numbers follow :mod:`glocal.models.delg`).

Only L_g reaches the backbone; the two local losses train the attention, the autoencoder and the attention
classifier (appendix B: "5 extra trainable layers ... their gradients are not backpropagated to the network
backbone").
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from glocal.models.delg import Delg

#: DELG's weights of the reconstruction (lambda) and attention (beta) losses
RECONSTRUCTION_WEIGHT = 10.0
ATTENTION_WEIGHT = 1.0


@dataclass
class LocalLosses:
    """``attention`` L_a and ``reconstruction`` L_r (unweighted), the attention classifier's batch accuracy."""

    attention: Tensor
    reconstruction: Tensor
    accuracy: float


def attention_pool(attention: Tensor, reconstructed: Tensor) -> Tensor:
    """``a = mean_h A_h S'_h / |S'_h|`` (module docstring): (B, 1, h, w) x (B, C, h, w) -> (B, C)."""
    return (attention * F.normalize(reconstructed, dim=1)).mean(dim=(2, 3))


def reconstruction_loss(reconstructed: Tensor, res4: Tensor) -> Tensor:
    """``L_r``: mean squared error of the reconstruction against the (gradient-stopped) res4 map."""
    return F.mse_loss(reconstructed, res4.detach())


def delg_local_losses(model: Delg, res4: Tensor, labels: Tensor, classifier: nn.Linear) -> LocalLosses:
    """L_a and L_r of a batch from its res4 map (B, C, h, w); ``classifier``: C -> classes (with bias).

    The map is detached here (and again in :meth:`Delg.local_heads`): no gradient reaches the backbone."""
    res4 = res4.detach()
    attention, _, reconstructed = model.local_heads(res4)
    logits = classifier(attention_pool(attention, reconstructed))
    return LocalLosses(F.cross_entropy(logits, labels), reconstruction_loss(reconstructed, res4),
                       float((logits.argmax(1) == labels).float().mean()))
