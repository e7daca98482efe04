"""Posting-list arithmetic of the ASMK inverted file, on arrays only: no files, manifest or locks.

Writing: :func:`posting_arrays` turns flat (item, word, code) rows into the word-sorted arrays of one
segment (layout: :mod:`glocal.index.inverted_file`). Reading: :func:`idf_weights`, :func:`item_scores` (the
ASMK kernel over the posting lists of the query's words, normalisation included, D2R eq. 1) and
:func:`top_images`. :class:`glocal.index.inverted_file.InvertedFile` keeps the files and commits around them.
"""
from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt

from glocal.index.asmk import AggregatedImage
from glocal.index.kernel import block_similarity, gather, match_blocks, take_rows
from glocal.index.layout import IndexSettings, Segment
from glocal.index.posting_records import interleave


def posting_arrays(sizes: npt.NDArray[np.int64], words: npt.NDArray, codes: npt.NDArray,
                   per_image: npt.NDArray[np.int64], item0: int, image0: int, vocabulary: int
                   ) -> dict[str, npt.NDArray]:
    """The arrays of a segment holding items ``item0, item0 + 1, ...`` of images ``image0, ...``: item i owns
    the next ``sizes[i]`` (word, code) rows, image j the next ``per_image[j]`` items; ``vocabulary`` words.

    Binary codes (uint8) are stored as records ``postings`` (code, item id), other codes as ``items`` and
    ``codes`` (see :mod:`glocal.index.layout`). Raises ValueError if an item lists the same word twice.
    """
    entry_item = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
    key = words.astype(np.uint16 if vocabulary <= 1 << 16 else np.int64)
    order = np.argsort(key, kind="stable")  # radix sort for 16-bit keys; keeps items ascending per word
    w_sorted = words[order].astype(np.int32)
    if len(w_sorted):
        dup = (w_sorted[1:] == w_sorted[:-1]) & (entry_item[order][1:] == entry_item[order][:-1])
        if dup.any():
            raise ValueError("an item lists the same visual word twice")
    starts = np.flatnonzero(np.concatenate([[True], w_sorted[1:] != w_sorted[:-1]])) if len(w_sorted) else np.zeros(0, np.int64)
    items, codes = (entry_item[order] + item0).astype(np.uint32), take_rows(codes, order)
    entries = {"postings": interleave(items, codes)} if codes.dtype == np.uint8 else {"items": items, "codes": codes}
    return {
        "words": w_sorted[starts], "bounds": np.append(starts, len(w_sorted)).astype(np.int64), **entries,
        "item_image": (np.repeat(np.arange(len(per_image)), per_image) + image0).astype(np.uint32),
        "item_size": sizes.astype(np.uint32),
    }


def idf_weights(segments: Sequence[Segment], vocabulary: int, n_items: int
                ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(word weight log(N / n_c)^2, per-item sum of its words' weights) over ``n_items`` items."""
    counts = np.zeros(vocabulary, np.float64)
    for s in segments:
        counts[s.words] += np.diff(s.bounds)
    weight = np.ones_like(counts)  # words no item has keep weight 1, as in the reference asmk
    nz = counts > 0
    weight[nz] = np.log(max(n_items, 1) / counts[nz]) ** 2
    item_norm = np.zeros(n_items, np.float64)
    for s in segments:
        per_entry = np.repeat(weight[s.words], np.diff(s.bounds))
        item_norm[s.item_start:s.item_start + s.n_items] += np.bincount(
            np.asarray(s.items, np.int64) - s.item_start, weights=per_entry, minlength=s.n_items)
    return weight, item_norm


def item_scores(segments: Sequence[Segment], query: AggregatedImage, n_items: int, dim: int,
                settings: IndexSettings, table: npt.NDArray[np.float64], weight: npt.NDArray[np.float64] | None,
                item_norm: npt.NDArray[np.float64], threads: int) -> npt.NDArray[np.float64]:
    """K(X, Y) for each of the ``n_items`` items Y of ``segments``, normalised by ``item_norm`` (and the
    query's own norm); ``weight``: per-word IDF weights, or None. Segments are scored on ``threads`` threads."""
    acc = np.zeros(n_items, np.float64)
    qwords = np.asarray(query.words, np.int64)

    def score(s: Segment) -> None:  # segments own disjoint item ranges: threads never write the same cell
        for qrows, starts, lens in match_blocks(qwords, s.words, s.bounds):
            sim = block_similarity(s.codes, query.codes, qrows, starts, lens, dim,
                                   settings.alpha, settings.tau, table)
            if weight is not None:
                sim = sim * np.repeat(weight[qwords[qrows]], lens)
            acc[s.item_start:s.item_start + s.n_items] += np.bincount(
                gather(s.items, starts, lens) - np.uint32(s.item_start), weights=sim, minlength=s.n_items)

    if threads > 1 and len(segments) > 1:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(score, segments))
    else:
        for s in segments:
            score(s)
    q_norm = weight[qwords].sum() if weight is not None else float(len(query))
    gamma = np.divide(1.0, np.sqrt(item_norm), out=np.zeros_like(item_norm), where=item_norm > 0)
    return acc * gamma / np.sqrt(q_norm) if q_norm > 0 else acc * 0.0


def top_images(scores: npt.NDArray[np.float32], top: int, live: int
               ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """(image ids, scores) of the ``top`` best of ``scores`` (-inf: removed; at most ``live`` images are
    returned), best first, ties by id (argpartition, no full sort)."""
    top = min(int(top), live)
    if top <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    cand = np.argpartition(-scores, top - 1)[:top] if top < len(scores) else np.arange(len(scores))
    cand = cand[np.isfinite(scores[cand])]
    order = np.lexsort((cand, -scores[cand]))
    return cand[order].astype(np.int64), scores[cand[order]]
