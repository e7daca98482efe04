"""The numba kernels of :mod:`glocal.index.scan` (imported on the first compiled query: numba takes ~0.6 s
to import, which the CLI and the numpy path should not pay)."""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic


@intrinsic
def popcount(typingctx, x):  # noqa: ANN001, ANN202 - numba intrinsic signature
    """LLVM ``ctpop`` of an unsigned 64-bit integer (one POPCNT instruction where the CPU has it)."""
    if x != types.uint64:
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen


def _byte_pointer(context, builder, aryty, ary, offset):  # noqa: ANN001, ANN202
    base = context.make_array(aryty)(context, builder, ary)
    ptr = cgutils.get_item_pointer(context, builder, aryty, base, [offset], wraparound=False)
    return builder.bitcast(ptr, ir.IntType(8).as_pointer())


def _load(width: int, result):  # noqa: ANN001, ANN202
    """An intrinsic loading a little-endian unsigned ``width``-bit integer at any byte offset of a uint8 array."""
    @intrinsic
    def load(typingctx, arr, offset):  # noqa: ANN001, ANN202
        if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype == types.uint8):
            return None

        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            p = _byte_pointer(context, builder, signature.args[0], args[0], args[1])
            v = builder.load(builder.bitcast(p, ir.IntType(width).as_pointer()), align=1)
            return builder.zext(v, ir.IntType(64)) if width < 64 else v

        return result(arr, types.intp), codegen
    return load


load_u64 = _load(64, types.uint64)
load_u32 = _load(32, types.uint64)


@intrinsic
def prefetch(typingctx, arr, offset):  # noqa: ANN001, ANN202
    """Hint the cache line holding byte ``offset`` of a uint8 array into the caches (``llvm.prefetch``; never
    faults, so an offset past the end is harmless)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype == types.uint8):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        p = _byte_pointer(context, builder, signature.args[0], args[0], args[1])
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [p.type, i32, i32, i32]),
                                            "llvm.prefetch.p0i8")
        builder.call(fn, [p, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(arr, types.intp), codegen


@numba.njit(nogil=True, cache=True)
def _first_at_least(rec, size, id_at, a, b, value):  # noqa: ANN001, ANN202
    """First record in [a, b) whose item id (at byte ``id_at`` of a ``size``-byte record) is >= value."""
    while a < b:
        mid = (a + b) // 2
        if load_u32(rec, mid * size + id_at) < value:
            a = mid + 1
        else:
            b = mid
    return a


@numba.njit(nogil=True, cache=True)
def _record_ranges(rec, size, starts, lens, lo, hi, inside):  # noqa: ANN001, ANN202
    """[cur, end) of each list's records whose item id lies in [lo, hi)."""
    id_at = size - 4
    m = len(starts)
    cur = np.empty(m, np.int64)
    end = np.empty(m, np.int64)
    for j in range(m):
        a = starts[j]
        b = a + lens[j]
        if inside or lens[j] == 0 or (load_u32(rec, a * size + id_at) >= lo and load_u32(rec, (b - 1) * size + id_at) < hi):
            cur[j] = a  # the whole list lies in [lo, hi): no binary search (its probes are cache misses)
            end[j] = b
        else:
            cur[j] = _first_at_least(rec, size, id_at, a, b, lo)
            end[j] = _first_at_least(rec, size, id_at, cur[j], b, hi)
    return cur, end


@numba.njit(nogil=True, cache=True)
def scan_record_pairs(rec, starts, lens, qcodes, qrows, table, lo, hi, acc, dist, inside):  # noqa: ANN001, ANN202
    """:func:`scan_records` for 128-bit codes and unit word weights, two lists at a time (list j with list
    j + m / 2, records alternating: twice the memory streams in flight). An item's terms are then added in
    another order, so this is used only where every order gives the same float64 sums
    (:func:`glocal.index.scan.order_free`)."""
    cur, end = _record_ranges(rec, 20, starts, lens, lo, hi, inside)
    m = len(starts)
    half = (m + 1) // 2
    for j in range(half):
        ra = qrows[j]
        a0 = qcodes[ra, 0]
        a1 = qcodes[ra, 1]
        pa = cur[j] * 20
        ea = end[j] * 20
        na = cur[j + 1] * 20 if j + 1 < half else ea
        nea = end[j + 1] * 20 if j + 1 < half else ea
        jb = j + half
        b0 = b1 = np.uint64(0)
        pb = eb = nb = neb = 0
        if jb < m:
            b0 = qcodes[qrows[jb], 0]
            b1 = qcodes[qrows[jb], 1]
            pb = cur[jb] * 20
            eb = end[jb] * 20
            nb = cur[jb + 1] * 20 if jb + 1 < m else eb
            neb = end[jb + 1] * 20 if jb + 1 < m else eb
        while pa < ea or pb < eb:
            if pa < ea:
                x = pa + dist
                prefetch(rec, x if x < ea else min(na + x - ea, nea))
                acc[load_u32(rec, pa + 16)] += table[popcount(load_u64(rec, pa) ^ a0) + popcount(load_u64(rec, pa + 8) ^ a1)]
                pa += 20
            if pb < eb:
                y = pb + dist
                prefetch(rec, y if y < eb else min(nb + y - eb, neb))
                acc[load_u32(rec, pb + 16)] += table[popcount(load_u64(rec, pb) ^ b0) + popcount(load_u64(rec, pb + 8) ^ b1)]
                pb += 20


@numba.njit(nogil=True, cache=True)
def scan_records(rec, width, starts, lens, qcodes, qrows, table, wq, lo, hi, block, acc, dist, inside):  # noqa: ANN001, ANN202
    """:func:`scan_lists` over records (``width`` 64-bit code words, then a uint32 item id) in a flat uint8
    array: one stream per list. While the record at byte p is scored, the byte ``dist`` ahead is prefetched,
    and past a list's end the prefetch runs on into the start of the next list, so a new list does not wait
    for the hardware prefetcher to notice a new stream (``dist`` = 0: no software prefetch). ``inside``: the
    segment's items all lie in [lo, hi), so every list is scanned whole (no look at its ends)."""
    size = 8 * width + 4
    id_at = 8 * width
    m = len(starts)
    cur, end = _record_ranges(rec, size, starts, lens, lo, hi, inside)
    for b0 in range(lo, hi, block):
        b1 = min(hi, b0 + block)
        whole = b1 == hi  # last (or only) block: every remaining entry of [cur, end) is in it
        if dist > 0 and m > 0:
            for k in range(0, dist, 64):
                prefetch(rec, min(cur[0] * size + k, end[0] * size))
        for j in range(m):
            r = qrows[j]
            w = wq[j]
            i = cur[j]
            e = end[j]
            if not whole:
                e = _first_at_least(rec, size, id_at, i, e, b1)
            last = e * size
            nxt = cur[j + 1] * size if j + 1 < m else last
            nlast = end[j + 1] * size if j + 1 < m else last
            if width == 2:
                q0 = qcodes[r, 0]
                q1 = qcodes[r, 1]
                for p in range(i * size, last, size):
                    if dist > 0:
                        ahead = p + dist
                        prefetch(rec, ahead if ahead < last else min(nxt + ahead - last, nlast))
                    h = popcount(load_u64(rec, p) ^ q0) + popcount(load_u64(rec, p + 8) ^ q1)
                    acc[load_u32(rec, p + 16)] += table[h] * w
            else:
                for p in range(i * size, last, size):
                    if dist > 0:
                        ahead = p + dist
                        prefetch(rec, ahead if ahead < last else min(nxt + ahead - last, nlast))
                    h = np.uint64(0)
                    for k in range(width):
                        h += popcount(load_u64(rec, p + 8 * k) ^ qcodes[r, k])
                    acc[load_u32(rec, p + id_at)] += table[h] * w
            cur[j] = e


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
