"""Training tuples for a global descriptor (Radenovic, Tolias & Chum, Fine-tuning CNN image retrieval with no
human annotation, TPAMI 2019, section 3): a query, one positive and N hard negatives, with the contrastive loss

    l(i, j) = 1/2 y(i, j) ||f_i - f_j||^2 + 1/2 (1 - y(i, j)) [tau - ||f_i - f_j||]_+^2

(y = 1 for the matching pair, 0 for a query-negative pair; tau the margin; f the L2-normalised descriptors),
summed over the 1 + N pairs of a tuple (:func:`tuple_loss`, through
:func:`glocal.train.fire_losses.contrastive_terms` with ``form="cirtorch"``).

Mining (:func:`mine_tuples`), repeated every epoch with the current network's descriptors: for each query a
positive drawn at random among the other images of its class (or, when the data lists positive pairs, the
pair's positive, each pair a query of the epoch), and as negatives the images most similar to the
query among those of other classes (never the class's ignored images), at most one per class (the paper takes
one image per 3D model so that the negatives are diverse); distractors (no class) each count as their own
class. The images to mine from are a random pool (``pool_size``) of the training set, as in the paper.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor

from glocal.train.data import TrainingSet
from glocal.train.fire_losses import contrastive_terms


@dataclass(frozen=True)
class Tuples:
    """Mined tuples: (T, 2 + N) image indices, columns query, positive, negatives (-1: none found)."""

    rows: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.rows)


def tuple_loss(descriptors: Tensor, margin: float) -> Tensor:
    """The module docstring's loss for one tuple of L2-normalised descriptors (2 + n, D): row 0 the query,
    row 1 the positive, rows 2.. the negatives."""
    q = descriptors[:1]
    return contrastive_terms(q, descriptors[1:2], descriptors[2:].unsqueeze(0), margin, form="cirtorch")


def mine_tuples(data: TrainingSet, describe: Callable[[Sequence[int]], Tensor], negatives: int,
                generator: torch.Generator, queries: int = 0, pool_size: int = 0) -> Tuples:
    """Tuples for one epoch (module docstring).

    :param describe: image indices -> (n, D) L2-normalised descriptors by the current network.
    :param negatives: N, hard negatives per tuple.
    :param generator: the source of every random choice (the trainer saves its state).
    :param queries: queries per epoch (0: every anchor), drawn at random.
    :param pool_size: images to mine negatives from (0: all).
    """
    anchors = data.anchors()
    if len(anchors) == 0:
        raise ValueError("tuples.py: no class has two images; nothing to train on")

    def perm(n: int) -> npt.NDArray[np.int64]:
        return torch.randperm(n, generator=generator).numpy()

    if data.pairs is not None:  # listed (query, positive) pairs (SfM-120k)
        picked = data.pairs[perm(len(data.pairs))]
        if queries:
            picked = picked[:queries]
        chosen, positives = picked[:, 0].copy(), [int(p) for p in picked[:, 1]]
    else:
        chosen = anchors[perm(len(anchors))]
        if queries:
            chosen = chosen[:queries]
        positives = []
        for q in chosen:
            same = np.flatnonzero(data.labels == data.labels[q])
            same = same[same != q]
            positives.append(int(same[int(torch.randint(len(same), (1,), generator=generator))]))
    pool = np.arange(len(data))
    if pool_size and pool_size < len(pool):
        pool = np.sort(pool[perm(len(pool))[:pool_size]])
    rows = np.full((len(chosen), 2 + negatives), -1, dtype=np.int64)
    rows[:, 0], rows[:, 1] = chosen, positives
    if negatives > 0:
        needed = np.unique(np.concatenate([chosen, pool]))
        desc = describe(needed.tolist())
        at = {int(i): k for k, i in enumerate(needed)}
        qd = desc[[at[int(q)] for q in chosen]]
        pd = desc[[at[int(p)] for p in pool]]
        sims = (qd @ pd.T).cpu().numpy()
        pool_labels = data.labels[pool]
        for t, q in enumerate(chosen):
            c = int(data.labels[q])
            ignored = data.ignore.get(c, frozenset())
            taken: set[int] = set()
            k = 0
            for j in np.argsort(-sims[t], kind="stable"):
                img, lab = int(pool[j]), int(pool_labels[j])
                if lab == c or img in ignored:
                    continue
                group = lab if lab >= 0 else -1 - img  # a distractor is its own group
                if group in taken:
                    continue
                taken.add(group)
                rows[t, 2 + k] = img
                k += 1
                if k == negatives:
                    break
    return Tuples(rows)


def normalised(x: Tensor) -> Tensor:
    """Rows L2-normalised."""
    return F.normalize(x, p=2, dim=-1)


def average_precision(ranked_positive: npt.NDArray[np.bool_], n_positives: int) -> float:
    """AP of one ranking: the mean over the positives of the precision at their ranks."""
    if n_positives == 0:
        return float("nan")
    hits = np.flatnonzero(ranked_positive)
    return float(np.mean((np.arange(len(hits)) + 1) / (hits + 1)))


def mean_average_precision(descriptors: Tensor | npt.NDArray, data: TrainingSet) -> float:
    """mAP of every image with a class (and another image of it) as a query against all the other images of
    ``data``: positives its class, the class's ignored images left out of the ranking."""
    d = np.asarray(descriptors.detach().cpu() if isinstance(descriptors, Tensor) else descriptors, np.float64)
    sims = d @ d.T
    aps = []
    for q in data.anchors():
        c = int(data.labels[q])
        keep = np.ones(len(data), dtype=bool)
        keep[q] = False
        keep[list(data.ignore.get(c, ()))] = False
        order = np.flatnonzero(keep)[np.argsort(-sims[q, keep], kind="stable")]
        positive = data.labels[order] == c
        aps.append(average_precision(positive, int(positive.sum())))
    return float(np.mean(aps)) if aps else float("nan")
