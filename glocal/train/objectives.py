"""What the tuples loop (:func:`glocal.train.loop.train_tuples`) optimises: network outputs -> loss.

A :class:`TupleObjective` tells the loop three things about a network: the global descriptor of one image that
hard negatives are mined with and the held-out mAP is measured with (``describe``), what the loss needs of
each image of a tuple (``outputs``), and the loss of one tuple from those outputs in tuple order (query,
positive, negatives; ``loss``). The loop itself (mining, accumulation, checkpoints, exact resume, evaluation,
export) is the same for every objective.

* :func:`global_objective`, the ``tuples`` regime: the contrastive loss on the network's L2-normalised global
  descriptor, in cirtorch's form (:func:`glocal.train.tuples.tuple_loss`). For GeM this is cirtorch's
  fine-tuning; for HOW the network's output is HOW eq. 1, g = normalise(sum_l ||u_l|| o(u_l)) over the
  smoothed, whitened local features, and the loss is HOW eq. 2 in the form the reference HOW training uses
  (cirtorch ``ContrastiveLoss``, margin 0.8).
* :func:`superfeature_objective`, the ``tuples-superfeatures`` regime (FIRe, ICLR 2022 sec. 3.2):
  0.02 L_super (eq. 7-8, margin 1.1) + 0.1 sum over the tuple's images of L_attn (eq. 9) on the Super-features
  and the final LIT attention maps (:func:`glocal.train.fire_losses.fire_tuple_loss`); negatives are mined with
  the global descriptor of FIRe eq. 1 (the network's ``global_descriptor``), as the paper does.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from glocal.train.fire_losses import FireLossConfig, fire_tuple_loss
from glocal.train.tuples import normalised, tuple_loss


@dataclass(frozen=True)
class TupleObjective:
    """The network-output -> loss hook of the tuples loop (module docstring).

    :param describe: ``(network, image (1, 3, H, W)) -> (1, D)`` global descriptor (the loop L2-normalises it).
    :param outputs: ``(network, image) ->`` what :attr:`loss` needs of one image (tensors or tuples of them).
    :param loss: the outputs of a tuple's images (query, positive, negatives) -> a scalar loss.
    """

    describe: Callable[[nn.Module, Tensor], Tensor]
    outputs: Callable[[nn.Module, Tensor], Any]
    loss: Callable[[Sequence[Any]], Tensor]


def _network_output(network: nn.Module, x: Tensor) -> Tensor:
    return network(x)


def global_objective(margin: float) -> TupleObjective:
    """The contrastive loss on ``network(x)``, the image's global descriptor (GeM; HOW eq. 1-2)."""

    def loss(outputs: Sequence[Tensor]) -> Tensor:
        return tuple_loss(normalised(torch.cat(list(outputs)).float()), margin)

    return TupleObjective(_network_output, _network_output, loss)


def _global_descriptor(network: nn.Module, x: Tensor) -> Tensor:
    return network.global_descriptor(x)


def _super_features(network: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    sf = network.super_features(x)
    return sf.descriptors[0], sf.attention[0]


def superfeature_objective(config: FireLossConfig | None = None) -> TupleObjective:
    """FIRe's loss (module docstring) for a network with ``super_features(x)`` (descriptors (1, N, k) and
    attention (1, N, h, w)) and ``global_descriptor(x)``; ``config``: weights, margin, pair selection (the
    paper's defaults: :class:`~glocal.train.fire_losses.FireLossConfig`). Each image keeps its own size, so
    the attention maps go to the loss one per image."""
    config = config or FireLossConfig()

    def loss(outputs: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
        descriptors = torch.stack([d.float() for d, _ in outputs])
        return fire_tuple_loss(descriptors, [a.float() for _, a in outputs], config).total

    return TupleObjective(_global_descriptor, _super_features, loss)
