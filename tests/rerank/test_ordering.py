"""The final order by spatially distinct inliers and a share of the first-stage score (glocal.rerank.ordering)."""
from __future__ import annotations

import numpy as np
import pytest

from glocal.rerank.ordering import distinct_counts, distinct_inliers, reorder
from glocal.rerank.shortlist import Reranked


def _matches(query_xy: np.ndarray, db_xy: np.ndarray) -> np.ndarray:
    return np.concatenate([query_xy, db_xy], axis=1).astype(np.float32)


def _spread(n: int, offset: float = 0.0) -> np.ndarray:
    """n points on a 40 px grid (one per 16 px cell)."""
    return np.stack([np.arange(n) % 10 * 40.0 + offset, np.arange(n) // 10 * 40.0 + offset], axis=1)


def _burst(n: int) -> np.ndarray:
    """n points inside one 12 x 12 px square (inside one 16 px cell: 96 <= 100 + u < 112)."""
    rng = np.random.default_rng(0)
    return 100.0 + rng.uniform(0, 12, size=(n, 2))


def test_distinct_inliers_counts_occupied_cells_on_the_more_crowded_side() -> None:
    spread = _matches(_spread(12), _spread(12, offset=5.0))
    assert distinct_inliers(spread, 16.0) == 12
    # every query point in one cell, the database points spread out: the crowded side counts
    assert distinct_inliers(_matches(_burst(12), _spread(12)), 16.0) == 1
    assert distinct_inliers(_matches(_spread(12), _burst(12)), 16.0) == 1
    assert distinct_inliers(_matches(_spread(12), _burst(12)), 4.0) > 1  # smaller cells split the burst
    assert distinct_inliers(spread, 0.0) == 12  # 0: every inlier counts
    assert distinct_inliers(np.zeros((0, 4), np.float32), 16.0) == 0


def _result(position: int, matches: np.ndarray, shortlist: float, threshold: int = 8) -> Reranked:
    n = len(matches)
    return Reranked(position=position, inliers=n, matches=matches, shortlist_score=shortlist, verified=True,
                    putative=n, is_match=n >= threshold)


def test_a_burst_of_inliers_falls_below_fewer_spread_ones_and_the_decision_stays_on_inliers() -> None:
    burst = _result(0, _matches(_burst(19), _burst(19)), shortlist=0.9)     # 19 inliers in one small patch
    spread = _result(1, _matches(_spread(9), _spread(9, 3.0)), shortlist=0.5)  # 9 inliers over the image
    weak = _result(2, _matches(_spread(2), _spread(2)), shortlist=0.8)
    plain = reorder([burst, spread, weak])
    assert [r.position for r in plain] == [0, 1, 2] and all(r.order_score is None for r in plain)
    ordered = reorder([burst, spread, weak], cell_px=16.0)
    assert [r.position for r in ordered] == [1, 2, 0]
    assert [r.order_score for r in ordered] == [9.0, 2.0, 1.0]
    assert [r.score for r in ordered] == [r.order_score for r in ordered]  # what a hit shows is what it is ordered by
    # the yes/no decision and the inlier counts are untouched
    assert [(r.inliers, r.is_match) for r in ordered] == [(9, True), (2, False), (19, True)]


def test_shortlist_weight_lets_a_much_stronger_first_stage_match_overtake() -> None:
    a = _result(0, _matches(_spread(10), _spread(10)), shortlist=1.0)
    b = _result(1, _matches(_spread(12), _spread(12)), shortlist=0.2)
    assert [r.position for r in reorder([a, b], shortlist_weight=1.0)] == [1, 0]  # 10 + 1 < 12 + 0.2
    ordered = reorder([a, b], shortlist_weight=4.0)  # 10 + 4 > 12 + 0.8
    assert [r.position for r in ordered] == [0, 1]
    assert ordered[0].order_score == pytest.approx(14.0) and ordered[1].order_score == pytest.approx(12.8)


def test_candidates_below_min_inliers_keep_shortlist_order_after_the_others() -> None:
    a = _result(0, _matches(_spread(3), _spread(3)), shortlist=0.9)
    b = _result(1, _matches(_spread(9), _spread(9)), shortlist=0.1)
    c = _result(2, _matches(_spread(4), _spread(4)), shortlist=0.95)
    ordered = reorder([a, b, c], cell_px=16.0, shortlist_weight=100.0, min_inliers=5)
    assert [r.position for r in ordered] == [1, 2, 0]


def test_negative_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="cell_px"):
        reorder([], cell_px=-1.0)


def test_all_candidates_at_once_count_as_one_at_a_time() -> None:
    rng = np.random.default_rng(3)
    sets = [rng.uniform(0, 300, size=(n, 4)).astype(np.float32) for n in (0, 1, 7, 40, 3)]
    sets.append(_matches(_burst(9), _spread(9)))
    for cell in (0.0, 5.0, 16.0, 64.0, 1e-7):  # 1e-7: too many cells for one int64 key
        one_by_one = []
        for m in sets:
            q = {tuple(c) for c in np.floor(m[:, :2] / cell).astype(int)} if cell else set(range(len(m)))
            d = {tuple(c) for c in np.floor(m[:, 2:] / cell).astype(int)} if cell else set(range(len(m)))
            one_by_one.append(min(len(q), len(d)))
        assert distinct_counts(sets, cell).tolist() == one_by_one
