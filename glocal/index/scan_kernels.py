"""The numba kernels of :mod:`glocal.index.scan` (imported on the first compiled query: numba takes ~0.6 s
to import, which the CLI and the numpy path should not pay)."""
from __future__ import annotations

import numba
import numpy as np
from numba.core import types
from numba.extending import intrinsic


@intrinsic
def popcount(typingctx, x):  # noqa: ANN001, ANN202 - numba intrinsic signature
    """LLVM ``ctpop`` of an unsigned 64-bit integer (one POPCNT instruction where the CPU has it)."""
    if x != types.uint64:
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen

@numba.njit(nogil=True, cache=True)
def scan_lists(codes, items, starts, lens, qcodes, qrows, table, wq, lo, hi, block, acc):  # noqa: ANN001, ANN202
    """acc[item] += wq[j] * table[h] for the entries of list j whose item lies in [lo, hi), ``block`` items
    at a time (all lists for one block, then the next: the block's accumulators stay in cache)."""
    width = codes.shape[1]
    m = len(starts)
    cur = np.empty(m, np.int64)
    end = np.empty(m, np.int64)
    for j in range(m):
        s = starts[j]
        cur[j] = s + np.searchsorted(items[s:s + lens[j]], lo)
        end[j] = s + np.searchsorted(items[s:s + lens[j]], hi)
    if block >= hi - lo:  # one block: plain loops over [cur, end), no per-entry bound check
        for j in range(m):
            r = qrows[j]
            w = wq[j]
            if width == 2:
                q0 = qcodes[r, 0]
                q1 = qcodes[r, 1]
                for i in range(cur[j], end[j]):
                    h = popcount(codes[i, 0] ^ q0) + popcount(codes[i, 1] ^ q1)
                    acc[items[i]] += table[h] * w
            else:
                for i in range(cur[j], end[j]):
                    h = np.uint64(0)
                    for k in range(width):
                        h += popcount(codes[i, k] ^ qcodes[r, k])
                    acc[items[i]] += table[h] * w
        return
    for b0 in range(lo, hi, block):
        b1 = min(hi, b0 + block)
        for j in range(m):
            i = cur[j]
            e = end[j]
            r = qrows[j]
            w = wq[j]
            if width == 2:
                q0 = qcodes[r, 0]
                q1 = qcodes[r, 1]
                while i < e and items[i] < b1:
                    h = popcount(codes[i, 0] ^ q0) + popcount(codes[i, 1] ^ q1)
                    acc[items[i]] += table[h] * w
                    i += 1
            else:
                while i < e and items[i] < b1:
                    h = np.uint64(0)
                    for k in range(width):
                        h += popcount(codes[i, k] ^ qcodes[r, k])
                    acc[items[i]] += table[h] * w
                    i += 1
            cur[j] = i

@numba.njit(nogil=True, cache=True)
def finish_top_k(acc, gamma, q_scale, removed, top):  # noqa: ANN001, ANN202
    """float32(acc * gamma / q_scale) per image (-inf if removed) and the ``top`` best (score desc, id asc),
    unsorted: a bounded min-heap whose root is the worst kept (lowest score, then highest id)."""
    n = len(acc)
    out = np.empty(n, np.float32)
    hs = np.empty(max(top, 1), np.float32)
    hi_ = np.empty(max(top, 1), np.int64)
    size = 0
    for i in range(n):
        v = np.float32(acc[i] * gamma[i] / q_scale)
        if removed[i]:
            v = np.float32(-np.inf)
        out[i] = v
        if top == 0 or not np.isfinite(v):
            continue
        if size < top:  # sift up
            c = size
            size += 1
            while c > 0:
                p = (c - 1) // 2
                if hs[p] < v or (hs[p] == v and hi_[p] > i):
                    break
                hs[c] = hs[p]
                hi_[c] = hi_[p]
                c = p
            hs[c] = v
            hi_[c] = i
        elif v > hs[0]:  # ids ascend: an equal score never beats a kept one; sift down
            c = 0
            while True:
                left = 2 * c + 1
                if left >= size:
                    break
                m = left
                if left + 1 < size and (hs[left + 1] < hs[left] or (hs[left + 1] == hs[left] and hi_[left + 1] > hi_[left])):
                    m = left + 1
                if v < hs[m] or (v == hs[m] and i > hi_[m]):
                    break
                hs[c] = hs[m]
                hi_[c] = hi_[m]
                c = m
            hs[c] = v
            hi_[c] = i
    return out, hi_[:size].copy(), hs[:size].copy()
