"""Hybrid verification: the words verifier for the whole shortlist, descriptor matching for a few images.

Fast spatial matching (Philbin et al., CVPR 2007) only pairs features that share a visual word; under a strong
viewpoint change the descriptor of a feature often falls outside the few words nearest to its counterpart, so
the pair is lost although its descriptors are still mutual nearest neighbours. :func:`add_descriptor_checks`
verifies a few shortlisted images again with descriptor matching (:func:`glocal.rerank.shortlist.rerank`:
nearest neighbours, Lowe's ratio, robust affine fit) and keeps, per image, the verification with more inliers;
the final order is then recomputed with :func:`glocal.rerank.shortlist.final_order` (inliers, shortlist score).

Which images (:func:`descriptor_positions`): ``shortlist``, the best ``k`` by first-stage score; or
``unverified``, the best ``k`` by first-stage score among those the words left below the decision threshold
(the images the words verifier may have missed; those it verified keep their words inliers).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from glocal.records import ImageFeatures
from glocal.rerank.shortlist import Reranked, final_order, rerank

__all__ = ["DESCRIPTOR_PICKS", "add_descriptor_checks", "descriptor_positions"]

DESCRIPTOR_PICKS = ("shortlist", "unverified")


def descriptor_positions(results: Sequence[Reranked], k: int, pick: str = "shortlist",
                         verify_min_inliers: int = 0) -> list[int]:
    """Shortlist positions (first-stage order) of the images to verify with descriptors (module docstring).

    :param results: the words verifier's results (any order), one per shortlisted image.
    :param k: at most this many positions.
    :param pick: ``shortlist`` or ``unverified`` (needs ``verify_min_inliers`` >= 1).
    """
    if pick not in DESCRIPTOR_PICKS:
        raise ValueError(f"pick must be one of {DESCRIPTOR_PICKS}, got {pick!r}")
    if pick == "unverified" and verify_min_inliers < 1:
        raise ValueError("pick='unverified' needs verify_min_inliers >= 1")
    by_position = sorted(results, key=lambda r: r.position)
    if pick == "unverified":
        by_position = [r for r in by_position if r.inliers < verify_min_inliers]
    return [r.position for r in by_position[:max(0, k)]]


def add_descriptor_checks(results: Sequence[Reranked], query: ImageFeatures,
                          candidate: Callable[[list[int]], Sequence[ImageFeatures]], positions: Sequence[int], *,
                          min_inliers: int = 0, verify_min_inliers: int = 0, workers: int = 1,
                          **rerank_options: object) -> list[Reranked]:
    """The words results with the images at ``positions`` verified again by descriptor matching; each keeps
    the verification with more inliers (ties: the words'); returned in final order.

    :param results: one :class:`Reranked` per shortlisted image (``position`` = first-stage rank).
    :param candidate: gives the database features of a list of positions (may load lazily).
    :param rerank_options: ``matcher`` and ``verifier`` of :func:`glocal.rerank.shortlist.rerank`.
    :param min_inliers, verify_min_inliers: as in :func:`glocal.rerank.shortlist.rerank`.
    """
    merged = {r.position: r for r in results}
    if len(merged) != len(results):
        raise ValueError("results hold one position twice")
    positions = [int(p) for p in positions]
    if positions:
        scores = [merged[p].shortlist_score for p in positions]
        checked = rerank(query, candidate(positions), scores, workers=workers, min_inliers=min_inliers,
                         verify_min_inliers=verify_min_inliers, **rerank_options)  # type: ignore[arg-type]
        for r in checked:
            p = positions[r.position]
            if r.inliers > merged[p].inliers:
                merged[p] = dataclasses.replace(r, position=p)
    ordered = [merged[p] for p in sorted(merged)]
    inliers = np.array([r.inliers for r in ordered], np.int64)
    scores_all = np.array([r.shortlist_score for r in ordered], np.float64)
    return [ordered[i] for i in final_order(inliers, scores_all, min_inliers=min_inliers)]
