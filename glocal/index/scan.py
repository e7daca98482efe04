"""Compiled ASMK* scoring: one pass over the query words' posting lists, popcount on packed 64-bit words.

The same sums as :func:`glocal.index.postings.item_scores` (Tolias et al., IJCV 2016; D2R eq. 1-2): for every
query word c and every database item Y in c's posting list,

    acc[Y] += w_c * sigma(1 - 2 h / d),   h = popcount(b(X_c) xor b(Y_c)),   sigma(u) = u^alpha if u > tau else 0

with ``sigma`` read from the (d + 1)-entry table of :func:`glocal.index.kernel.selectivity_table` and
``w_c`` = 1 (or the IDF weight). Items are added to in the same order as the vectorised path (query words
ascending, list order inside a word, float64), so on an index whose lists fit one gather chunk the scores
are bit-identical, and otherwise equal to float64 rounding.

Where the time goes in the vectorised path (``benchmarks/asmk_scale.py --profile``): copying every entry's
code and item id out of the lists, repeating the query code per entry, XOR, popcount per byte, a table
look-up, and one ``bincount`` into a dense float64 array per chunk, then four more passes over all N images
(normalisation, float32, removed, ``argpartition``). Here each entry is read once and added in place, the
item range is split between threads (posting lists hold items in ascending order, so a thread finds its
part of each list by binary search and threads never write the same cell), and normalisation, removal and
the top-k are one fused pass.

Version-2 segments store each entry as one record (code, item id; :mod:`glocal.index.posting_records`), so
a list is one memory stream; the scan prefetches ``DIST`` bytes ahead, running on into the next list, and
where the order of an item's additions cannot change its float64 sum (:func:`order_free`, the default
alpha = 3 without IDF) scans two lists at a time. Version-1 segments (two arrays) keep the older loop.
At 1M images a query reads ~680 MB (34 M entries x 20 bytes); see benchmarks/RESULTS.md for the profile.

numba compiles the loops of :mod:`glocal.index.scan_kernels`, imported on first use (``cache=True``:
compiled once per machine, then loaded from ``__pycache__``).
Without numba, :data:`AVAILABLE` is False and callers use the vectorised path.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from glocal.index.layout import Segment

AVAILABLE = importlib.util.find_spec("numba") is not None  # numba is optional: the numpy path gives the same scores
#: items whose float64 sums are updated together (the lists are revisited once per block). Measured on a
#: 1M index (43 M entries a query), CPU ms: whole range 150, 262,144 items 181, 65,536 items 205: revisiting
#: 4,300 lists per block costs more than the accumulators' cache misses save, so the default is one block.
BLOCK = 1 << 62
#: records layout: bytes ahead of the scanned record that are prefetched, running on into the next list past
#: a list's end. Single-thread CPU ms per 1M query (34 M entries, load 10-13; two runs of 8 and 14 queries):
#: no software prefetch 99-121; next list's first 16 lines + 2 KB ahead inside a list 86-110; running on
#: into the next list, 1 KB 94-97, 2 KB 90-103, 4 KB 92-100.
DIST = 2048


@lru_cache(maxsize=1)
def _kernels():  # noqa: ANN202
    from glocal.index import scan_kernels  # lazy: numba is imported on the first compiled query

    return scan_kernels


def _words64(codes: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint64]:
    c = np.ascontiguousarray(codes)
    return c.view(np.uint64) if len(c) else np.zeros((0, c.shape[1] // 8), np.uint64)


def accumulate(segments: Sequence[Segment], qwords: npt.NDArray[np.int64], qcodes: npt.NDArray[np.uint8],
               n_items: int, table: npt.NDArray[np.float64], weight: npt.NDArray[np.float64] | None,
               threads: int, block: int | None = None) -> npt.NDArray[np.float64]:
    """sum_c w_c sigma(similarity) per item over the posting lists of the query words (no normalisation).

    The item range [0, ``n_items``) is cut into ``threads`` parts, each scanned by one thread over every
    segment (each item's additions keep their order: query words ascending).
    """
    acc = np.zeros(n_items, np.float64)
    block = BLOCK if block is None else max(1, int(block))
    q64 = _words64(qcodes)
    jobs = []
    for s in segments:
        if len(s.words) == 0:
            continue
        pos = np.minimum(np.searchsorted(s.words, qwords), len(s.words) - 1)
        hit = np.flatnonzero(s.words[pos] == qwords)
        if len(hit) == 0:
            continue
        w = pos[hit]
        starts = np.asarray(s.bounds[w], np.int64)
        lens = np.asarray(s.bounds[w + 1], np.int64) - starts
        wq = weight[qwords[hit]] if weight is not None else np.ones(len(hit), np.float64)
        data = s.postings.reshape(-1) if s.postings is not None else _words64(s.codes)
        jobs.append((s, data, starts, lens, hit.astype(np.int64), np.ascontiguousarray(wq, np.float64)))
    cuts = thread_cuts(n_items, [s.item_start for s in segments], threads)
    pairs = q64.shape[1] == 2 and block >= n_items and order_free(table, weight, len(qwords))

    def run(t: int) -> None:
        lo, hi = int(cuts[t]), int(cuts[t + 1])
        k = _kernels()
        for s, data, starts, lens, qrows, wq in jobs:
            if hi <= s.item_start or lo >= s.item_start + s.n_items:
                continue
            if s.postings is not None:  # records (code, item id): one stream per list
                inside = lo <= s.item_start and s.item_start + s.n_items <= hi
                if pairs:
                    k.scan_record_pairs(data, starts, lens, q64, qrows, table, lo, hi, acc, DIST, inside)
                else:
                    k.scan_records(data, q64.shape[1], starts, lens, q64, qrows, table, wq, lo, hi, block, acc,
                                   DIST, inside)
            else:  # version-1 segment: codes and item ids in two arrays
                k.scan_lists(data, s.items, starts, lens, q64, qrows, table, wq, lo, hi, block, acc)

    if threads > 1 and n_items > 1:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, range(threads)))
    else:
        run(0)
    return acc


def order_free(table: npt.NDArray[np.float64], weight: npt.NDArray[np.float64] | None, n_words: int) -> bool:
    """Whether every order of adding an item's terms gives the same float64 sum: unit word weights (no IDF)
    and a selectivity table of multiples of one power of two 2^-k (alpha = 3: ((d - 2h) / d)^3 = multiples of
    2^-18 for d = 128) whose sums over ``n_words`` words stay below 2^53 units: then every partial sum is
    exact. The scan may then interleave lists (:func:`scan_record_pairs`) and stay bit-identical."""
    if weight is not None or len(table) == 0 or not np.all(np.isfinite(table)) or table.min() < 0:
        return False
    for k in range(0, 40):
        units = table * 2.0**k
        if np.all(units == np.round(units)):
            return float(units.max()) * max(int(n_words), 1) < 2.0**53
    return False


def budget_words(segments: Sequence[Segment], qwords: npt.NDArray[np.int64], budget: float) -> npt.NDArray[np.bool_]:
    """The query words an approximate query scans (opt-in, ``budget`` < 1): its words in order of increasing
    posting-list length (all segments), while their entries add up to at most ``budget`` x the entries of all
    its lists. The longest lists are the most frequent words, which weigh least in the ranking (IDF); the
    cost is measured as recall against exact scoring (``benchmarks/asmk_scale.py``, ``asmk_budget.py``)."""
    lens = np.zeros(len(qwords), np.int64)
    for s in segments:
        if len(s.words) == 0:
            continue
        pos = np.minimum(np.searchsorted(s.words, qwords), len(s.words) - 1)
        hit = s.words[pos] == qwords
        lens[hit] += np.asarray(s.bounds[pos[hit] + 1], np.int64) - np.asarray(s.bounds[pos[hit]], np.int64)
    order = np.argsort(lens, kind="stable")
    cum = np.cumsum(lens[order])
    keep = np.zeros(len(qwords), bool)
    if len(cum):
        keep[order[:int(np.searchsorted(cum, budget * cum[-1], side="right"))]] = True
    return keep


def thread_cuts(n_items: int, segment_starts: Sequence[int], threads: int, slack: float = 0.1
                ) -> npt.NDArray[np.int64]:
    """Item range bounds of ``threads`` scans: even parts, each inner bound moved to the nearest segment start
    when one lies within ``slack`` x ``n_items`` (a thread then reads whole posting lists, not halves)."""
    cuts = np.linspace(0, n_items, max(1, threads) + 1).astype(np.int64)
    starts = np.asarray([b for b in segment_starts if 0 < b < n_items], np.int64)
    for t in range(1, len(cuts) - 1):
        if len(starts):
            near = int(starts[np.argmin(np.abs(starts - cuts[t]))])
            if abs(near - cuts[t]) <= slack * n_items and cuts[t - 1] < near < cuts[t + 1]:
                cuts[t] = near
    return cuts


def finish_top(acc: npt.NDArray[np.float64], gamma: npt.NDArray[np.float64], q_norm: float,
               removed: npt.NDArray[np.bool_], top: int
               ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """(scores float32(acc * gamma / sqrt(q_norm)) with removed images at -inf, top ids, their scores): the
    ``top`` best finite scores, best first, ties by id, in one pass."""
    if q_norm <= 0:
        acc = acc * 0.0
        q_norm = 1.0
    out, ids, vals = _kernels().finish_top_k(acc, gamma, float(np.sqrt(q_norm)), removed, max(0, int(top)))
    order = np.lexsort((ids, -vals))
    return out, ids[order], vals[order]
