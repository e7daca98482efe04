"""The revisited Oxford / Paris evaluation protocol (Radenovic et al., CVPR 2018).

Implements the reference revisitop ``compute_ap`` / ``compute_map`` definitions:

* AP by the trapezoidal rule: with the positives' 0-based ranks ``r_0 < r_1 < ...`` (after removing
  ignored images) and ``n`` ground-truth positives, positive ``j`` adds
  ``(1/n) * (p_before + p_at) / 2`` with ``p_before = j / r_j`` (1 when ``r_j = 0``) and
  ``p_at = (j + 1) / (r_j + 1)``.
* Ignored (junk) images are removed from the ranking: the rank of a positive is shifted down by the
  number of junk images ranked strictly above it.
* mAP and mP@k are means over the queries that have at least one positive; others get ``nan``.
* mP@k clips k per query to the rank of its last found positive: ``kq = min(max(pos), k)`` (1-based).

Differences from the reference, all on inputs where it crashes or cannot be used:

* ``ranks`` is **query-major**: row ``i`` holds the database indices for query ``i``, best first
  (revisitop uses a database x queries array). Rows may be truncated (``K < n_database``) or ragged
  (a list of sequences); negative entries are padding and are dropped.
* A positive that never appears in a truncated ranking is missed: it adds nothing to AP (the recall
  step still counts it, as in the reference). When no positive is found at all, AP = 0 and every
  P@k = 0 (the reference crashes on ``max`` of an empty array there).

Every number returned inside this module is a **fraction** in [0, 1]; tables and JSON files multiply
by 100.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

DEFAULT_KAPPAS: tuple[int, ...] = (1, 5, 10)
REVISITED_SETUPS: tuple[str, ...] = ("easy", "medium", "hard")
RanksLike = npt.ArrayLike | Sequence[Sequence[int]]


@dataclass(frozen=True)
class SetupResult:
    """Scores of one protocol setup; all values are fractions in [0, 1] (not percentages).

    :param map: mean average precision over queries with positives (``nan`` if there are none).
    :param aps: (n_queries,) AP per query; ``nan`` for a query without positives.
    :param mp: mean precision at k, ``{k: value}`` for each k in ``kappas``.
    :param prs: (n_queries, len(kappas)) precision at clipped k per query; ``nan`` rows as for ``aps``.
    :param kappas: the k values, in the column order of ``prs``.
    """

    map: float
    aps: npt.NDArray[np.float64]
    mp: dict[int, float]
    prs: npt.NDArray[np.float64]
    kappas: tuple[int, ...] = field(default=DEFAULT_KAPPAS)

    @property
    def n_valid(self) -> int:
        """Number of queries that have positives (those counted in the means)."""
        return int(np.count_nonzero(~np.isnan(self.aps)))


def rank_rows(ranks: RanksLike) -> list[npt.NDArray[np.int64]]:
    """Split a query-major ranking into one int64 row per query, dropping negative (padding) entries.

    :param ranks: (n_queries, K) integer array, or a list of per-query sequences of any lengths.
    :raises ValueError: a 2-D array is expected; the message says what shape was given.
    """
    if isinstance(ranks, np.ndarray):
        if ranks.ndim != 2:
            raise ValueError(f"ranks must be (n_queries, K) database indices, got shape {ranks.shape}")
        rows = [np.asarray(r) for r in ranks]
    else:
        rows = [np.asarray(r).reshape(-1) for r in ranks]  # type: ignore[union-attr]
    out = []
    for i, r in enumerate(rows):
        if r.size and not np.issubdtype(r.dtype, np.integer) and not np.all(np.equal(np.mod(r, 1), 0)):
            raise ValueError(f"ranks row {i} holds non-integer values (dtype {r.dtype})")
        r = r.astype(np.int64, copy=False)
        out.append(r[r >= 0])
    return out


def compute_ap(positive_ranks: npt.ArrayLike, n_positives: int) -> float:
    """Average precision by the trapezoidal rule (revisitop ``compute_ap``).

    :param positive_ranks: sorted 0-based ranks of the found positives, junk already removed.
    :param n_positives: number of ground-truth positives (missed ones lower the recall step's total).
    :returns: AP in [0, 1]; 0 when nothing was found.
    """
    r = np.asarray(positive_ranks, dtype=np.float64).reshape(-1)
    if n_positives <= 0:
        raise ValueError(f"n_positives must be positive, got {n_positives}")
    if r.size == 0:
        return 0.0
    j = np.arange(r.size, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p_before = np.where(r == 0, 1.0, j / np.where(r == 0, 1.0, r))
    p_at = (j + 1.0) / (r + 1.0)
    return float(np.sum(p_before + p_at) / (2.0 * n_positives))


def positive_ranks(ranking: npt.NDArray[np.int64], ok: npt.ArrayLike, junk: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """0-based ranks of the positives in one ranking after removing the junk ranked above each.

    A positive's rank is lowered by the number of junk entries at strictly earlier positions, exactly as
    the reference loop does (an index listed both as positive and as junk stays a positive).
    """
    ok_arr = np.asarray(ok, dtype=np.int64).reshape(-1)
    junk_arr = np.asarray(junk, dtype=np.int64).reshape(-1)
    pos = np.flatnonzero(np.isin(ranking, ok_arr))
    if junk_arr.size == 0 or pos.size == 0:
        return pos.astype(np.int64)
    jpos = np.flatnonzero(np.isin(ranking, junk_arr))
    return (pos - np.searchsorted(jpos, pos, side="left")).astype(np.int64)


def _precision_at(pos_1based: npt.NDArray[np.int64], kappas: Sequence[int]) -> npt.NDArray[np.float64]:
    """P@k with the reference clipping ``kq = min(max(pos), k)``; all zero when nothing was found."""
    out = np.zeros(len(kappas), dtype=np.float64)
    if pos_1based.size == 0:
        return out
    last = int(pos_1based.max())
    for c, k in enumerate(kappas):
        kq = min(last, int(k))
        out[c] = np.count_nonzero(pos_1based <= kq) / kq
    return out


def compute_map(
    ranks: RanksLike,
    gnd: Sequence[Mapping[str, npt.ArrayLike]],
    kappas: Sequence[int] = DEFAULT_KAPPAS,
) -> tuple[float, npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """mAP and mP@k over queries (revisitop ``compute_map``, query-major ranks).

    :param ranks: (n_queries, K) database indices, best first; or a list of per-query sequences.
        Negative entries are padding. Database images absent from a row are unranked (missed).
    :param gnd: one dict per query with ``ok`` (positive indices) and optionally ``junk`` (ignored).
    :param kappas: the k of mP@k.
    :returns: ``(map, aps, mpr, prs)``: mean AP; (n_queries,) AP per query (``nan`` for queries without
        positives, which are skipped from the means); (len(kappas),) mean P@k; (n_queries, len(kappas))
        P@k per query (``nan`` rows likewise). All fractions. ``map`` and ``mpr`` are ``nan`` when no
        query has positives.
    :raises ValueError: the number of ranking rows differs from the number of ground-truth entries.
    """
    rows = rank_rows(ranks)
    if len(rows) != len(gnd):
        raise ValueError(f"ranks has {len(rows)} query rows but the ground truth has {len(gnd)} queries")
    kappas = tuple(int(k) for k in kappas)
    if any(k < 1 for k in kappas):
        raise ValueError(f"every k of mP@k must be >= 1, got {kappas}")
    nq = len(rows)
    aps = np.full(nq, np.nan, dtype=np.float64)
    prs = np.full((nq, len(kappas)), np.nan, dtype=np.float64)
    for i, (row, q) in enumerate(zip(rows, gnd, strict=True)):
        ok = np.asarray(q["ok"], dtype=np.int64).reshape(-1)
        if ok.size == 0:
            continue
        junk = q.get("junk", ())
        pos = positive_ranks(row, ok, junk if junk is not None else ())
        aps[i] = compute_ap(pos, int(ok.size))
        prs[i] = _precision_at(pos + 1, kappas)
    valid = ~np.isnan(aps)
    if not valid.any():
        return float("nan"), aps, np.full(len(kappas), np.nan), prs
    return float(aps[valid].mean()), aps, prs[valid].mean(axis=0), prs


def setup_gnd(gnd: Sequence[Mapping[str, npt.ArrayLike]], setup: str) -> list[dict[str, npt.NDArray[np.int64]]]:
    """Positives and ignored images of one revisited setup from the raw ``easy``/``hard``/``junk`` lists.

    Easy: ok = easy, junk = junk + hard. Medium: ok = easy + hard, junk = junk.
    Hard: ok = hard, junk = junk + easy (Radenovic et al. 2018, Sec. 3).
    """
    def arr(q: Mapping[str, npt.ArrayLike], key: str) -> npt.NDArray[np.int64]:
        return np.asarray(q.get(key, ()), dtype=np.int64).reshape(-1)

    out = []
    for i, q in enumerate(gnd):
        if "easy" not in q or "hard" not in q:
            raise ValueError(f"ground-truth query {i} has no 'easy'/'hard' lists (keys: {sorted(q)})")
        easy, hard, junk = arr(q, "easy"), arr(q, "hard"), arr(q, "junk")
        if setup == "easy":
            out.append({"ok": easy, "junk": np.concatenate([junk, hard])})
        elif setup == "medium":
            out.append({"ok": np.concatenate([easy, hard]), "junk": junk})
        elif setup == "hard":
            out.append({"ok": hard, "junk": np.concatenate([junk, easy])})
        else:
            raise ValueError(f"unknown setup {setup!r}; expected one of {REVISITED_SETUPS}")
    return out


def _result(ranks: RanksLike, gnd: Sequence[Mapping[str, npt.ArrayLike]], kappas: Sequence[int]) -> SetupResult:
    m, aps, mpr, prs = compute_map(ranks, gnd, kappas)
    ks = tuple(int(k) for k in kappas)
    return SetupResult(map=m, aps=aps, mp={k: float(v) for k, v in zip(ks, mpr, strict=True)}, prs=prs, kappas=ks)


def revisited_setups(
    ranks: RanksLike,
    gnd: Sequence[Mapping[str, npt.ArrayLike]],
    kappas: Sequence[int] = DEFAULT_KAPPAS,
) -> dict[str, SetupResult]:
    """Evaluate the Easy, Medium and Hard setups of the revisited protocol.

    :param ranks: query-major ranking as in :func:`compute_map`.
    :param gnd: the raw ground truth, one dict per query with ``easy``, ``hard`` and ``junk``.
    :returns: ``{"easy": SetupResult, "medium": ..., "hard": ...}`` with fractions, not percentages.
    """
    rows = rank_rows(ranks)
    return {s: _result(rows, setup_gnd(gnd, s), kappas) for s in REVISITED_SETUPS}


def is_revisited(gnd: Sequence[Mapping[str, object]]) -> bool:
    """True when every query has ``easy`` and ``hard`` lists (the revisited ground-truth layout)."""
    return len(gnd) > 0 and all("easy" in q and "hard" in q for q in gnd)


def setups_for(gnd: Sequence[Mapping[str, npt.ArrayLike]]) -> dict[str, list[dict[str, npt.NDArray[np.int64]]]]:
    """The per-setup ``ok``/``junk`` lists for a ground truth: revisited Easy/Medium/Hard, else ``all``."""
    if is_revisited(gnd):
        return {s: setup_gnd(gnd, s) for s in REVISITED_SETUPS}
    return {"all": [{"ok": np.asarray(q["ok"], np.int64), "junk": np.asarray(q.get("junk", ()), np.int64)}
                    for q in gnd]}


def evaluate_setups(
    ranks: RanksLike,
    gnd: Sequence[Mapping[str, npt.ArrayLike]],
    kappas: Sequence[int] = DEFAULT_KAPPAS,
) -> dict[str, SetupResult]:
    """Revisited setups for an ``easy``/``hard``/``junk`` ground truth, else one ``all`` setup on ``ok``/``junk``."""
    rows = rank_rows(ranks)
    return {name: _result(rows, g, kappas) for name, g in setups_for(gnd).items()}


def precision_recall(
    ranking: npt.ArrayLike, ok: npt.ArrayLike, junk: npt.ArrayLike = ()
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Recall and precision after each found positive of one query, junk removed.

    :returns: ``(recall, precision)``, each of length = number of found positives.
    """
    ok_arr = np.asarray(ok, dtype=np.int64).reshape(-1)
    if ok_arr.size == 0:
        raise ValueError("precision_recall needs at least one positive")
    row = rank_rows([np.asarray(ranking).reshape(-1)])[0]
    pos = positive_ranks(row, ok_arr, junk)
    j = np.arange(1, pos.size + 1, dtype=np.float64)
    return j / ok_arr.size, j / (pos + 1.0)


def mean_pr_curve(
    ranks: RanksLike,
    gnd_setup: Sequence[Mapping[str, npt.ArrayLike]],
    levels: int = 101,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Mean interpolated precision-recall curve over queries with positives.

    Interpolated precision at recall r = the highest precision at any recall >= r (0 past the last
    found positive), averaged over queries at ``levels`` evenly spaced recall values in [0, 1].
    """
    recall_axis = np.linspace(0.0, 1.0, levels)
    rows = rank_rows(ranks)
    curves = []
    for row, q in zip(rows, gnd_setup, strict=True):
        if np.asarray(q["ok"]).size == 0:
            continue
        rec, prec = precision_recall(row, q["ok"], q.get("junk", ()))
        interp = np.zeros(levels)
        if rec.size:
            best_after = np.maximum.accumulate(prec[::-1])[::-1]
            idx = np.searchsorted(rec, recall_axis - 1e-12, side="left")
            inside = idx < rec.size
            interp[inside] = best_after[idx[inside]]
        curves.append(interp)
    if not curves:
        return recall_axis, np.full(levels, np.nan)
    return recall_axis, np.mean(curves, axis=0)
