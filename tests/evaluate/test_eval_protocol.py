"""The revisited protocol against hand-worked examples and a direct reference implementation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from glocal.evaluate import compute_ap, compute_map, evaluate_setups, revisited_setups
from glocal.evaluate.protocol import mean_pr_curve, precision_recall, setup_gnd

# database indices used in the hand-worked examples
P1, P2, P3 = 10, 11, 12
N1, N2, N3 = 20, 21, 22
J1, J2 = 30, 31


def ap_of(row: list[int], ok: list[int], junk: list[int] = ()) -> float:  # type: ignore[assignment]
    m, aps, _, _ = compute_map(np.array([row]), [{"ok": ok, "junk": list(junk)}])
    assert m == aps[0]
    return float(aps[0])


# ------------------------------------------------------------------------------------- hand-worked
def test_ap_two_positives_at_ranks_1_and_3() -> None:
    # positive 1 at rank 0: (1 + 1)/2 * 1/2 ; positive 2 at rank 2: (1/2 + 2/3)/2 * 1/2
    expected = 0.5 + (0.5 + 2 / 3) / 4
    assert ap_of([P1, N1, P2, N2], [P1, P2]) == pytest.approx(expected)
    assert expected == pytest.approx(19 / 24)


def test_perfect_ranking_is_one() -> None:
    assert ap_of([P1, P2, P3, N1], [P1, P2, P3]) == pytest.approx(1.0)


def test_junk_before_positives_is_removed() -> None:
    assert ap_of([J1, P1, N1, P2], [P1, P2], [J1]) == pytest.approx(19 / 24)
    assert ap_of([J1, J2, P1, P2], [P1, P2], [J1, J2]) == pytest.approx(1.0)


def test_junk_between_positives_is_removed() -> None:
    assert ap_of([P1, J1, P2], [P1, P2], [J1]) == pytest.approx(1.0)
    assert ap_of([P1, N1, J1, J2, P2], [P1, P2], [J1, J2]) == pytest.approx(19 / 24)


def test_junk_after_positives_changes_nothing() -> None:
    assert ap_of([P1, N1, P2, J1, J2], [P1, P2], [J1, J2]) == pytest.approx(19 / 24)


def test_junk_counts_as_negative_when_not_declared() -> None:
    # the same ranking without the junk list: J1 is a plain negative at rank 1
    expected = 0.5 + (0.5 + 2 / 3) / 4
    assert ap_of([P1, J1, P2], [P1, P2]) == pytest.approx(expected)


def test_truncated_ranking_counts_missed_positives() -> None:
    # 3 positives, only the first is ranked: (1 + 1)/2 * 1/3
    assert ap_of([P1, N1, N2], [P1, P2, P3]) == pytest.approx(1 / 3)


def test_truncated_ranking_with_no_positive_found() -> None:
    m, aps, mpr, prs = compute_map(np.array([[N1, N2, N3]]), [{"ok": [P1], "junk": []}])
    assert aps[0] == 0.0 and m == 0.0
    assert np.all(prs == 0.0) and np.all(mpr == 0.0)


def test_empty_ranking_row() -> None:
    m, aps, _, prs = compute_map([[]], [{"ok": [P1]}])
    assert m == 0.0 and aps[0] == 0.0 and np.all(prs == 0)


def test_query_without_positives_is_skipped() -> None:
    ranks = np.array([[P1, N1, P2], [N1, N2, N3]])
    gnd = [{"ok": [P1, P2], "junk": []}, {"ok": [], "junk": [N1]}]
    m, aps, mpr, prs = compute_map(ranks, gnd)
    assert math.isnan(aps[1]) and np.all(np.isnan(prs[1]))
    assert m == pytest.approx(19 / 24)
    assert mpr == pytest.approx(prs[0])


def test_all_queries_without_positives_give_nan() -> None:
    m, aps, mpr, _ = compute_map(np.array([[N1]]), [{"ok": []}])
    assert math.isnan(m) and math.isnan(aps[0]) and np.all(np.isnan(mpr))


def test_precision_at_k_is_clipped_to_last_positive() -> None:
    # positives at 1-based ranks 1 and 3: P@1 = 1, P@5 -> k clipped to 3 -> 2/3, P@10 -> 2/3
    _, _, mpr, prs = compute_map(np.array([[P1, N1, P2, N2, N3]]), [{"ok": [P1, P2]}], kappas=(1, 5, 10))
    assert prs[0] == pytest.approx([1.0, 2 / 3, 2 / 3])
    # a single positive at rank 2: every k >= 2 is clipped to 2 -> 1/2; P@1 = 0
    _, _, _, prs = compute_map(np.array([[N1, P1, N2]]), [{"ok": [P1, P2]}], kappas=(1, 5, 10))
    assert prs[0] == pytest.approx([0.0, 0.5, 0.5])


def test_precision_uses_ranks_after_junk_removal() -> None:
    _, _, _, prs = compute_map(np.array([[J1, P1, J2, P2]]), [{"ok": [P1, P2], "junk": [J1, J2]}], kappas=(1, 2))
    assert prs[0] == pytest.approx([1.0, 1.0])


def test_negative_entries_are_padding() -> None:
    assert ap_of([P1, -1, -1], [P1]) == pytest.approx(1.0)


def test_ragged_rankings() -> None:
    m, aps, _, _ = compute_map([[P1, N1, P2], [N1]], [{"ok": [P1, P2]}, {"ok": [P1]}])
    assert aps == pytest.approx([19 / 24, 0.0])
    assert m == pytest.approx(19 / 48)


def test_row_count_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="2 query rows"):
        compute_map(np.zeros((2, 3), int), [{"ok": [1]}])


def test_compute_ap_direct() -> None:
    assert compute_ap([0, 2], 2) == pytest.approx(19 / 24)
    assert compute_ap([], 3) == 0.0


def test_setup_definitions() -> None:
    gnd = [{"easy": [1], "hard": [2], "junk": [3]}]
    easy, medium, hard = (setup_gnd(gnd, s)[0] for s in ("easy", "medium", "hard"))
    assert sorted(easy["ok"]) == [1] and sorted(easy["junk"]) == [2, 3]
    assert sorted(medium["ok"]) == [1, 2] and sorted(medium["junk"]) == [3]
    assert sorted(hard["ok"]) == [2] and sorted(hard["junk"]) == [1, 3]


def test_revisited_setups_by_hand() -> None:
    # easy = {1}, hard = {2}, junk = {3}; ranking 3, 2, 0, 1
    res = revisited_setups(np.array([[3, 2, 0, 1]]), [{"easy": [1], "hard": [2], "junk": [3]}])
    # easy: 3 and 2 removed -> [0, 1], positive at 0-based rank 1: (0/1 + 1/2)/2 = 0.25
    assert res["easy"].map == pytest.approx(0.25)
    # medium: 3 removed -> [2, 0, 1]: (1 + 1)/2/2 + (1/2 + 2/3)/2/2
    assert res["medium"].map == pytest.approx(19 / 24)
    # hard: 3 and 1 removed -> [2, 0]: AP 1
    assert res["hard"].map == pytest.approx(1.0)
    assert set(res["medium"].mp) == {1, 5, 10}
    assert res["medium"].prs.shape == (1, 3)


def test_evaluate_setups_custom_ground_truth() -> None:
    res = evaluate_setups(np.array([[P1, N1, P2]]), [{"ok": [P1, P2], "junk": []}])
    assert list(res) == ["all"] and res["all"].map == pytest.approx(19 / 24)


def test_precision_recall_and_mean_curve() -> None:
    rec, prec = precision_recall([P1, N1, P2], [P1, P2])
    assert rec == pytest.approx([0.5, 1.0]) and prec == pytest.approx([1.0, 2 / 3])
    r, p = mean_pr_curve(np.array([[P1, N1, P2]]), [{"ok": [P1, P2], "junk": []}], levels=5)
    assert r == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    assert p == pytest.approx([1, 1, 1, 2 / 3, 2 / 3])


# ------------------------------------------------------------------------- reference implementation
def reference_ap(ranks: np.ndarray, n_ok: int) -> float:
    """Trapezoidal AP written out as a loop over the found positives' ranks."""
    ap = 0.0
    for j, r in enumerate(ranks):
        before = 1.0 if r == 0 else j / r
        at = (j + 1) / (r + 1)
        ap += (before + at) / 2 / n_ok
    return ap


def reference_map(ranks_db_major: np.ndarray, gnd: list[dict], kappas: tuple[int, ...]) -> tuple:
    """The published definition with a (database x queries) ranking, written as plain loops."""
    nq = ranks_db_major.shape[1]
    aps, prs = np.zeros(nq), np.zeros((nq, len(kappas)))
    total, ptotal, empty = 0.0, np.zeros(len(kappas)), 0
    for i in range(nq):
        ok, junk = list(gnd[i]["ok"]), list(gnd[i]["junk"])
        if not ok:
            aps[i] = np.nan
            prs[i] = np.nan
            empty += 1
            continue
        column = list(ranks_db_major[:, i])
        pos = [t for t, idx in enumerate(column) if idx in ok]
        junk_pos = [t for t, idx in enumerate(column) if idx in junk]
        shifted = [p - sum(1 for jp in junk_pos if jp < p) for p in pos]
        ap = reference_ap(np.array(shifted), len(ok))
        aps[i] = ap
        total += ap
        one_based = np.array(shifted) + 1
        for c, k in enumerate(kappas):
            kq = min(one_based.max(), k)
            prs[i, c] = (one_based <= kq).sum() / kq
        ptotal += prs[i]
    return total / (nq - empty), aps, ptotal / (nq - empty), prs


def reference_setups(gnd_raw: list[dict], setup: str) -> list[dict]:
    out = []
    for q in gnd_raw:
        if setup == "easy":
            out.append({"ok": list(q["easy"]), "junk": list(q["junk"]) + list(q["hard"])})
        elif setup == "medium":
            out.append({"ok": list(q["easy"]) + list(q["hard"]), "junk": list(q["junk"])})
        else:
            out.append({"ok": list(q["hard"]), "junk": list(q["junk"]) + list(q["easy"])})
    return out


def random_ground_truth(rng: np.random.Generator, n_db: int, nq: int) -> list[dict]:
    gnd = []
    for i in range(nq):
        perm = rng.permutation(n_db)
        ne, nh, nj = rng.integers(0, 8), rng.integers(0, 8), rng.integers(0, 10)
        if i == 0:
            ne, nh = 0, 0  # a query with no positives in any setup
        gnd.append({"easy": perm[:ne].tolist(), "hard": perm[ne:ne + nh].tolist(),
                    "junk": perm[ne + nh:ne + nh + nj].tolist()})
    return gnd


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_on_random_full_rankings(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_db, nq, kappas = 120, 15, (1, 5, 10)
    gnd = random_ground_truth(rng, n_db, nq)
    ranks_db_major = np.stack([rng.permutation(n_db) for _ in range(nq)], axis=1)
    ours = revisited_setups(ranks_db_major.T, gnd, kappas)
    for setup in ("easy", "medium", "hard"):
        ref_map, ref_aps, ref_mpr, ref_prs = reference_map(ranks_db_major, reference_setups(gnd, setup), kappas)
        res = ours[setup]
        assert res.map == pytest.approx(ref_map, abs=1e-12)
        np.testing.assert_allclose(res.aps, ref_aps, atol=1e-12)
        np.testing.assert_allclose([res.mp[k] for k in kappas], ref_mpr, atol=1e-12)
        np.testing.assert_allclose(res.prs, ref_prs, atol=1e-12)


def test_matches_reference_on_truncated_rankings() -> None:
    rng = np.random.default_rng(7)
    n_db, nq, top = 80, 12, 30
    gnd = [{"ok": rng.choice(n_db, 5, replace=False).tolist(), "junk": []} for _ in range(nq)]
    for q in gnd:
        q["junk"] = [i for i in rng.choice(n_db, 6, replace=False).tolist() if i not in q["ok"]]
    full = np.stack([rng.permutation(n_db) for _ in range(nq)])
    for q, row in zip(gnd, full, strict=True):  # make sure the reference finds a positive in the top
        where = int(np.flatnonzero(np.isin(row, q["ok"]))[0])
        row[[where, 3]] = row[[3, where]]
    truncated = full[:, :top]
    ref = reference_map(truncated.T, gnd, (1, 5, 10))
    ours = compute_map(truncated, gnd, (1, 5, 10))
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12)
