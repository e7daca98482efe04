"""ViTGaL's local-branch losses (Phan et al., ACCV 2022, sec. 3.1-3.2, Fig. 3), for the ``classification``
regime: the autoencoder that turns the patch tokens into the 128-D local descriptors and whose class
attention scores the keypoints.

With S (h w, C) the patch tokens of the ViTGaL network (after its class-attention layer and layer norm, the
same tokens whose CLS is the global feature) *with the gradient stopped* ("the parameters of ViTGaL are kept
fixed during the training of the autoencoder"), the code ``L = E(S)`` (linear C -> 128, the local
descriptors) and the reconstruction ``S' = D(L)`` (linear 128 -> C):

* reconstruction (ViTGaL eq. 3): ``L_r = 1 / (H/16 x W/16 x C) sum_{h,w} |S_{h,w} - S'_{h,w}|^2``, the same
  mean squared error as DELG's eq. 4 (:func:`glocal.train.delg_losses.reconstruction_loss`, reused);
* classification (ViTGaL eq. 4): ``L_c = -log( exp(v_t^T f_r + b_t) / sum_i exp(v_i^T f_r + b_i) )`` where
  ``f_r`` is the CLS output of the autoencoder's *own* class-attention layer and layer norm over S'
  (:class:`glocal.models.vitgal.VitgalAutoencoder`), classified by a linear layer with bias (v_i, b_i);
* the autoencoder's loss: ``L_a = L_c + lambda L_r`` with lambda = 10 (sec. 4.1).

How it differs from DELG's local losses (:mod:`glocal.train.delg_losses`): DELG pools the L2-normalised
reconstruction with a separate attention network, ``a = mean_h A(S_h) S'_h / |S'_h|`` (DELG eq. 5), and
classifies ``a``; ViTGaL has no attention network: it aggregates S' with a class-attention layer (the
CLS token as query, the reconstructed tokens as keys and values) and classifies that CLS token; the
head-averaged attention of that layer is the keypoint score at extraction. DELG's S is the intermediate res4
map (its global feature comes from res5); ViTGaL's S is the final token map itself.

The paper trains the autoencoder *after* the global network, with ViTGaL frozen. In the regime both
schedules exist: ``global_weight = 0`` is the paper's second stage (ViTGaL frozen, run without gradients;
only the autoencoder and its classifier train), and ``global_weight > 0`` trains both at once, ArcFace on the
CLS token reaching the trunk while the local losses stop at S, as DELG trains jointly.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from glocal.models.vitgal import Vitgal
from glocal.train.delg_losses import LocalLosses, reconstruction_loss


def vitgal_local_losses(model: Vitgal, tokens: Tensor, labels: Tensor, classifier: nn.Linear) -> LocalLosses:
    """``L_c`` (as ``attention``: the class attention's cross-entropy) and ``L_r`` of a batch from its patch
    tokens S (B, N, C) (module docstring); ``classifier``: C -> classes (with bias).

    S is detached here: no gradient of these losses reaches the ViTGaL network."""
    tokens = tokens.detach()
    _, reconstructed, aggregated = model.autoencoder(tokens)
    logits = classifier(aggregated.cls)
    return LocalLosses(F.cross_entropy(logits, labels), reconstruction_loss(reconstructed, tokens),
                       float((logits.argmax(1) == labels).float().mean()))
