"""Streaming merge of consecutive inverted-file segments into one (compaction).

Segments are each sorted by visual word, and consecutive segments hold consecutive item ids, so the merged
posting list of a word is the concatenation of that word's lists in segment order (items stay ascending).
The output is written through a writable memory map, a range of words at a time, so memory stays bounded
by ``chunk`` entries whatever the index size; entries of removed images are dropped on the way. Every input
is checked against its checksum first: a damaged segment is refused, never rewritten under a valid one.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from glocal.index.posting_records import record_views
from glocal.index.segment_file import ArrayWriter, SegmentFileError

if TYPE_CHECKING:
    from glocal.index.layout import Segment


def _word_chunks(words: npt.NDArray, totals: npt.NDArray[np.int64], chunk: int) -> list[tuple[int, int]]:
    """Split positions of ``words`` into [lo, hi) ranges of at most ~``chunk`` entries (at least one word)."""
    cum = np.cumsum(totals)
    out, lo = [], 0
    while lo < len(words):
        base = cum[lo - 1] if lo > 0 else 0
        hi = max(lo + 1, int(np.searchsorted(cum, base + chunk, side="right")))
        out.append((lo, hi))
        lo = hi
    return out


def _ranges(seg: Segment, first_word: int, last_word: int) -> tuple[int, int, int, int]:
    """Word positions [a, b) and entry range [e0, e1) of ``seg`` for words in [first_word, last_word]."""
    a = int(np.searchsorted(seg.words, first_word, side="left"))
    b = int(np.searchsorted(seg.words, last_word, side="right"))
    return a, b, int(seg.bounds[a]), int(seg.bounds[b])


def merge_segments(run: Sequence[Segment], dead_items: npt.NDArray[np.bool_], out: Path,
                   chunk: int = 1 << 22) -> dict:
    """Write the merge of ``run`` (consecutive segments) to ``out``; returns its manifest entry (no file name).

    :param dead_items: (all items,) True for items whose image was removed: their entries are dropped.
    :raises SegmentFileError: an input segment fails its checksum (nothing is written: a merge must not give
        damaged entries a fresh, valid checksum).
    """
    for s in run:  # every input, verified or not before: its bytes may have changed since
        try:
            s.verify()
        except SegmentFileError as e:
            raise SegmentFileError(f"{e}; refusing to merge it into {out.name}, the index is left as it "
                                   "was") from None
    union = np.unique(np.concatenate([np.asarray(s.words) for s in run]))
    totals = np.zeros(len(union), np.int64)
    for s in run:
        totals[np.searchsorted(union, s.words)] += np.diff(s.bounds)
    live = totals.copy()
    if dead_items.any():  # first pass over item ids only: live entries per word
        for lo, hi in _word_chunks(union, totals, chunk):
            for s in run:
                a, b, e0, e1 = _ranges(s, union[lo], union[hi - 1])
                if e1 == e0:
                    continue
                dead = dead_items[s.items[e0:e1]]
                if dead.any():
                    per_word = np.add.reduceat(dead.astype(np.int64), np.asarray(s.bounds[a:b]) - e0)
                    live[np.searchsorted(union, s.words[a:b])] -= per_word
    keep = live > 0
    words_out = union[keep].astype(np.int32)
    bounds_out = np.concatenate([[0], np.cumsum(live[keep])]).astype(np.int64)
    n_entries = int(bounds_out[-1])
    code_shape = run[0].codes.shape[1:]
    item_image = np.concatenate([np.asarray(s.item_image) for s in run])
    item_size = np.concatenate([np.asarray(s.item_size) for s in run])
    records = run[0].codes.dtype == np.uint8  # binary codes: written as records (code, item id), any input layout
    entries = {"postings": (np.dtype(np.uint8), (n_entries, code_shape[0] + 4))} if records else {
        "items": (np.dtype(np.uint32), (n_entries,)), "codes": (run[0].codes.dtype, (n_entries, *code_shape))}
    specs = {
        "words": (np.dtype(np.int32), words_out.shape), "bounds": (np.dtype(np.int64), bounds_out.shape), **entries,
        "item_image": (np.dtype(np.uint32), item_image.shape), "item_size": (np.dtype(np.uint32), item_size.shape),
    }
    item_start = run[0].item_start
    image_start = int(run[0].entry["image_start"])
    writer = ArrayWriter(out, specs, {"item_start": item_start, "image_start": image_start})
    try:
        v = dict(writer.views)
        if records:
            v["items"], v["codes"] = record_views(v["postings"])
        v["words"][:] = words_out
        v["bounds"][:] = bounds_out
        v["item_image"][:] = item_image
        v["item_size"][:] = item_size
        pos = 0
        for lo, hi in _word_chunks(union, totals, chunk):
            parts_w, parts_i, parts_c = [], [], []
            for s in run:
                a, b, e0, e1 = _ranges(s, union[lo], union[hi - 1])
                if e1 == e0:
                    continue
                items = np.asarray(s.items[e0:e1])
                mask = ~dead_items[items]
                parts_w.append(np.repeat(np.asarray(s.words[a:b]), np.diff(s.bounds[a:b + 1]))[mask])
                parts_i.append(items[mask])
                parts_c.append(np.asarray(s.codes[e0:e1])[mask])
            if not parts_w:
                continue
            w = np.concatenate(parts_w)
            order = np.argsort(w, kind="stable")  # group by word; segment (= item) order kept inside a word
            n = len(w)
            v["items"][pos:pos + n] = np.concatenate(parts_i)[order]
            v["codes"][pos:pos + n] = np.concatenate(parts_c)[order]
            pos += n
        del v
        if pos != n_entries:
            raise RuntimeError(f"{out}: merge wrote {pos} entries, expected {n_entries}")
    except BaseException:
        writer.views = {}
        writer.finish()
        out.unlink(missing_ok=True)
        raise
    crc = writer.finish()
    return {"bytes": out.stat().st_size, "crc32": crc, "item_start": item_start, "items": len(item_image),
            "image_start": image_start, "images": sum(int(s.entry["images"]) for s in run),
            "entries": n_entries, "words": len(words_out)}
