"""numba kernels of the words verifier: the same results as the array code of :mod:`~glocal.rerank.word_matching`
and :mod:`~glocal.rerank.similarity_ransac`, bit for bit, in one pass per candidate.

Imported on first use (numba takes ~0.6 s to import; ``cache=True`` compiles once per machine). What makes
the results identical, not just close:

* every floating-point expression is written in the array code's order (no fused multiply-add: numba does
  not contract without ``fastmath``), and sums run over the pairs in the same order as ``np.bincount``;
* sines, cosines and the logarithm are not computed here: cos / sin of the orientation differences come in
  from numpy, and the scale test ``|log(r)| <= log 2`` is the equivalent ``r_lo <= r <= r_hi`` with the
  bounds found by probing numpy's own ``log`` (:func:`glocal.rerank.similarity_ransac.ratio_bounds`);
* ``np.mod`` of floats is ``fmod`` (exact) plus a sign fix, written out here;
* orders: stable sorts (a counting sort of the small non-negative integers: code distances, supports) where
  the array code uses ``lexsort`` with the position as last key.
"""
from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def _popcount64(x):  # noqa: ANN001, ANN202
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


@numba.njit(nogil=True, cache=True)
def word_pairs(db_words, word_start, word_count, q_codes, db_codes, use_codes, max_hamming, total):  # noqa: ANN001, ANN202
    """(rows, qpos, distance) of the same-word pairs kept by the code filter (``use_codes`` False: no
    filter, distance 0), ordered by database row then query entry: ``word_matching``'s order.

    :param q_codes, db_codes: (.., W) uint64 codes of the sorted query entries and of the database rows.
    :param total: the number of same-word pairs before filtering (the buffers' size).
    """
    rows = np.empty(total, np.int64)
    qpos = np.empty(total, np.int64)
    dist = np.empty(total, np.int64)
    width = q_codes.shape[1]
    n = 0
    for r in range(len(db_words)):
        w = db_words[r]
        s = word_start[w]
        for j in range(s, s + word_count[w]):
            h = 0
            if use_codes:
                for b in range(width):
                    h += _popcount64(q_codes[j, b] ^ db_codes[r, b])
                if h > max_hamming:
                    continue
            rows[n] = r
            qpos[n] = j
            dist[n] = h
            n += 1
    return rows[:n], qpos[:n], dist[:n]


@numba.njit(nogil=True, cache=True)
def _consistent(k, s, th, scale, angle, r_lo, r_hi, consistency, has_angle):  # noqa: ANN001, ANN202
    """Pair ``k``'s own scale ratio and orientation difference agree with the hypothesis (s, th)."""
    if not consistency:
        return True
    r = scale[k] / s
    if not (r >= r_lo and r <= r_hi):
        return False
    if has_angle:
        two_pi = 2 * np.pi
        y = angle[k] - th + np.pi
        m = np.fmod(y, two_pi)
        if m != 0.0:
            if m < 0.0:  # the divisor is positive: np.mod's sign fix
                m += two_pi
        else:
            m = 0.0
        if not abs(m - np.pi) <= np.pi / 6:  # NaN fails, as in the array code
            return False
    return True


@numba.njit(nogil=True, cache=True)
def _hypothesis(p, src, dst, scale, angle, cos_a, sin_a, has_angle):  # noqa: ANN001, ANN202
    """The similarity of pair ``p`` alone (module :mod:`glocal.rerank.similarity_ransac`): x' = [a -b; b a] x +
    (tx, ty) with a = s cos(theta), b = s sin(theta); returns (s, a, b, tx, ty, theta)."""
    s = scale[p]
    a = s * cos_a[p]
    b = s * sin_a[p]
    tx = dst[p, 0] - (a * src[p, 0] - b * src[p, 1])
    ty = dst[p, 1] - (b * src[p, 0] + a * src[p, 1])
    th = angle[p] if has_angle else 0.0
    return s, a, b, tx, ty, th


@numba.njit(nogil=True, cache=True)
def _one_to_one(mask, query, db, lo, n, qseen, dbseen, stamp, out):  # noqa: ANN001, ANN202
    """``out[:n]``: the masked pairs (``lo + i``), first of each query feature, then of each database feature;
    returns the count. ``qseen`` / ``dbseen`` hold ``stamp`` for features taken (no clearing needed)."""
    for i in range(n):
        out[i] = False
        if mask[i] and qseen[query[lo + i]] != stamp:
            qseen[query[lo + i]] = stamp
            out[i] = True
    count = 0
    for i in range(n):
        if out[i]:
            if dbseen[db[lo + i]] != stamp:
                dbseen[db[lo + i]] = stamp
                count += 1
            else:
                out[i] = False
    return count


@numba.njit(nogil=True, cache=True)
def _stable_order(values):  # noqa: ANN001, ANN202
    """``np.argsort(values, kind="stable")`` of non-negative integers (a counting sort)."""
    n = len(values)
    top = 0
    for i in range(n):
        top = max(top, values[i])
    start = np.zeros(top + 2, np.int64)
    for i in range(n):
        start[values[i] + 1] += 1
    for v in range(1, top + 2):
        start[v] += start[v - 1]
    order = np.empty(n, np.int64)
    for i in range(n):
        order[start[values[i]]] = i
        start[values[i]] += 1
    return order


@numba.njit(nogil=True, cache=True)
def verify_candidates(bounds, active, distance, src, dst, scale, angle, cos_a, sin_a, query, db,  # noqa: ANN001, ANN202, C901, PLR0912, PLR0913, PLR0915
                      hypotheses, scoring_pairs, refine, lo_iterations, thr2, consistency, has_angle, r_lo, r_hi):
    """``verify_batch``'s results (inliers, transforms, mask) computed one candidate at a time."""
    n = len(bounds) - 1
    total = len(distance)
    inliers = np.zeros(n, np.int64)
    transforms = np.empty((n, 2, 3))
    transforms.fill(np.nan)
    mask = np.zeros(total, np.bool_)
    top_q = top_db = 0
    for i in range(total):
        top_q = max(top_q, query[i])
        top_db = max(top_db, db[i])
    qseen = np.zeros(top_q + 2, np.int64)
    dbseen = np.zeros(top_db + 2, np.int64)
    stamp = 0
    longest = 0
    for c in range(n):
        longest = max(longest, bounds[c + 1] - bounds[c])
    start = np.empty(longest, np.bool_)
    cur = np.empty(longest, np.bool_)
    new = np.empty(longest, np.bool_)
    best_mask = np.empty(longest, np.bool_)
    model = np.empty((2, 3))
    fit = np.empty((2, 3))
    for c in range(n):
        lo = bounds[c]
        cnt = bounds[c + 1] - lo
        if not active[c] or cnt == 0:
            continue
        order = _stable_order(distance[lo:lo + cnt])
        n_hyp = min(cnt, hypotheses)
        per_h = min(cnt, scoring_pairs)
        score = np.zeros(n_hyp, np.int64)
        for j in range(n_hyp):
            s, a, b, tx, ty, th = _hypothesis(lo + order[j], src, dst, scale, angle, cos_a, sin_a, has_angle)
            sc = 0
            for i in range(per_h):
                k = lo + order[i]
                ex = a * src[k, 0] - b * src[k, 1] + tx - dst[k, 0]
                ey = b * src[k, 0] + a * src[k, 1] + ty - dst[k, 1]
                if ex * ex + ey * ey <= thr2 and _consistent(k, s, th, scale, angle, r_lo, r_hi, consistency,
                                                            has_angle):
                    sc += 1
            score[j] = sc
        top = 0
        for j in range(n_hyp):
            top = max(top, score[j])
        for j in range(n_hyp):
            score[j] = top - score[j]  # ascending order of (top - support): highest support first, stable
        ranked = _stable_order(score)
        best = -1
        for v in range(min(max(1, refine), n_hyp)):
            s, a, b, tx, ty, th = _hypothesis(lo + order[ranked[v]], src, dst, scale, angle, cos_a, sin_a,
                                              has_angle)
            for i in range(cnt):
                k = lo + i
                ex = a * src[k, 0] - b * src[k, 1] + tx - dst[k, 0]
                ey = b * src[k, 0] + a * src[k, 1] + ty - dst[k, 1]
                start[i] = ex * ex + ey * ey <= thr2 and _consistent(k, s, th, scale, angle, r_lo, r_hi,
                                                                     consistency, has_angle)
            stamp += 1
            v_in = _one_to_one(start, query, db, lo, cnt, qseen, dbseen, stamp, cur)
            model[0, 0], model[0, 1], model[0, 2] = a, -b, tx
            model[1, 0], model[1, 1], model[1, 2] = b, a, ty
            for _ in range(lo_iterations):
                ok = _fit_affine(cur, src, dst, lo, cnt, fit)
                if not ok:
                    break
                for i in range(cnt):
                    k = lo + i
                    px = fit[0, 0] * src[k, 0] + fit[0, 1] * src[k, 1] + fit[0, 2] - dst[k, 0]
                    py = fit[1, 0] * src[k, 0] + fit[1, 1] * src[k, 1] + fit[1, 2] - dst[k, 1]
                    start[i] = px * px + py * py <= thr2
                stamp += 1
                new_in = _one_to_one(start, query, db, lo, cnt, qseen, dbseen, stamp, new)
                if new_in < v_in:
                    break
                v_in = new_in
                for i in range(cnt):
                    cur[i] = new[i]
                for r in range(2):
                    for col in range(3):
                        model[r, col] = fit[r, col]
            if v_in > best:
                best = v_in
                inliers[c] = v_in
                for r in range(2):
                    for col in range(3):
                        transforms[c, r, col] = model[r, col]
                for i in range(cnt):
                    best_mask[i] = cur[i]
        if best >= 0:
            for i in range(cnt):
                mask[lo + i] = best_mask[i]
    return inliers, transforms, mask


@numba.njit(nogil=True, cache=True)
def _fit_affine(m, src, dst, lo, n, out):  # noqa: ANN001, ANN202
    """``similarity_ransac._fit_affine`` for one candidate's masked pairs; returns ok (well posed, finite)."""
    cnt = 0
    sx = sy = su = sv = 0.0
    for i in range(n):
        if m[i]:
            cnt += 1
            sx += src[lo + i, 0]
            sy += src[lo + i, 1]
            su += dst[lo + i, 0]
            sv += dst[lo + i, 1]
    denom = max(float(cnt), 1.0)
    mx, my, mu, mv = sx / denom, sy / denom, su / denom, sv / denom
    sxx = sxy = syy = sxu = syu = sxv = syv = 0.0
    for i in range(n):
        if m[i]:
            xc = src[lo + i, 0] - mx
            yc = src[lo + i, 1] - my
            uc = dst[lo + i, 0] - mu
            vc = dst[lo + i, 1] - mv
            sxx += xc * xc
            sxy += xc * yc
            syy += yc * yc
            sxu += xc * uc
            syu += yc * uc
            sxv += xc * vc
            syv += yc * vc
    det = sxx * syy - sxy * sxy
    if not (cnt >= 3 and det > 1e-6 * max(sxx * syy, 1e-12)):
        return False
    inv = 1.0 / det
    a11 = (sxu * syy - syu * sxy) * inv
    a12 = (syu * sxx - sxu * sxy) * inv
    a21 = (sxv * syy - syv * sxy) * inv
    a22 = (syv * sxx - sxv * sxy) * inv
    out[0, 0], out[0, 1], out[0, 2] = a11, a12, mu - a11 * mx - a12 * my
    out[1, 0], out[1, 1], out[1, 2] = a21, a22, mv - a21 * mx - a22 * my
    for r in range(2):
        for col in range(3):
            if not math.isfinite(out[r, col]):
                return False
    return True
