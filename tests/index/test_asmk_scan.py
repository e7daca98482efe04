"""The compiled ASMK* scan (glocal.index.scan) against the vectorised numpy path it replaces: same scores,
same rankings (ties by id), with several segments, IDF, empty words, removed images, regions, threads, and
both on-disk layouts of the entries (version-2 records, version-1 arrays) and their upgrade."""
from __future__ import annotations

import numpy as np
import pytest

from glocal.errors import BadOptionError, MissingDependencyError
from glocal.index import manifest, scan
from glocal.index.asmk import AggregatedImage
from glocal.index.codebook import Codebook
from glocal.index.inverted_file import IndexSettings, InvertedFile
from glocal.index.posting_records import interleave, record_views
from glocal.index.segment_file import ArrayFile, write_arrays
from glocal.methods.stages import SearchOptions

needs_numba = pytest.mark.skipif(not scan.AVAILABLE, reason="numba is not installed")
K = 64


def images(n: int, seed: int, dim: int, words: int = 20, k: int = K, few_codes: bool = False) -> list[AggregatedImage]:
    """Random aggregated images; ``few_codes``: codes drawn from 3 patterns, so many scores tie exactly."""
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 256, (3, dim // 8), dtype=np.uint8)
    out = []
    for _ in range(n):
        w = np.sort(rng.choice(k, int(rng.integers(1, words)), replace=False)).astype(np.int32)
        codes = pool[rng.integers(0, 3, len(w))] if few_codes else rng.integers(0, 256, (len(w), dim // 8), dtype=np.uint8)
        out.append(AggregatedImage(w, codes))
    return out


def full_ranking(scores: np.ndarray, top: int) -> np.ndarray:
    finite = np.flatnonzero(np.isfinite(scores))
    return finite[np.lexsort((finite, -scores[finite]))][:top]


def build(tmp_path, dim: int, batches: list[list[AggregatedImage]], **settings) -> InvertedFile:
    cb = Codebook(np.random.default_rng(0).standard_normal((K, dim)).astype(np.float32))
    idx = InvertedFile.create(tmp_path / "ivf", cb, IndexSettings(binary=True, **settings))
    for b in batches:
        idx.add(b)
    return idx


def assert_same(idx: InvertedFile, queries: list[AggregatedImage], top: int = 25) -> None:
    for q in queries:
        ref = idx.scores(q, kernel="numpy")
        new = idx.scores(q, kernel="compiled")
        np.testing.assert_array_equal(new, ref)  # same summation order: bit-identical here
        np.testing.assert_array_equal(idx.item_scores(q, kernel="compiled"), idx.item_scores(q, kernel="numpy"))
        ids, vals = idx.search(q, top, kernel="compiled")
        np.testing.assert_array_equal(ids, full_ranking(ref, top))
        np.testing.assert_array_equal(vals, ref[ids])
        ids_ref, vals_ref = idx.search(q, top, kernel="numpy")
        np.testing.assert_array_equal(vals, vals_ref)  # reference picks among boundary ties arbitrarily


@needs_numba
@pytest.mark.parametrize("dim", [64, 128, 256])
@pytest.mark.parametrize(("threads", "block"), [(1, None), (2, None), (3, None), (1, 7), (2, 16)])
def test_compiled_scan_equals_numpy_path(tmp_path, monkeypatch, dim, threads, block):
    if block:  # item blocks smaller than the index: the blocked loop, with lists cut at block bounds
        monkeypatch.setattr(scan, "BLOCK", block)
    batches = [images(70, 1, dim), images(1, 2, dim), images(55, 3, dim)]  # a one-image segment too
    with build(tmp_path, dim, batches) as idx:
        idx.threads = threads
        assert len(idx.segments) == 3
        assert_same(idx, images(6, 9, dim, words=50))


@needs_numba
def test_ties_removed_images_and_compaction(tmp_path):
    batches = [images(120, 4, 128, few_codes=True), images(80, 5, 128, few_codes=True)]
    with build(tmp_path, 128, batches) as idx:
        queries = images(5, 6, 128, words=40, few_codes=True)
        s = idx.scores(queries[0], kernel="numpy")
        assert len(s) - len(np.unique(s)) > 50  # many exact ties: the ranking relies on ids
        assert_same(idx, queries)
        idx.remove([0, 3, 77, 150, 199])
        assert_same(idx, queries)
        ids, _ = idx.search(queries[1], 500, kernel="compiled")
        assert len(ids) == 195 and not set(ids.tolist()) & {0, 3, 77, 150, 199}
        idx.compact()
        assert len(idx.segments) == 1
        assert_same(idx, queries)


@needs_numba
def test_empty_query_words_absent_from_index_and_idf(tmp_path):
    with build(tmp_path, 128, [images(60, 7, 128, k=32)], idf=True) as idx:  # words 32..63 have no list
        rng = np.random.default_rng(8)
        absent = AggregatedImage(np.arange(40, 50, dtype=np.int32), rng.integers(0, 256, (10, 16), dtype=np.uint8))
        mixed = AggregatedImage(np.arange(20, 45, dtype=np.int32), rng.integers(0, 256, (25, 16), dtype=np.uint8))
        empty = AggregatedImage(np.zeros(0, np.int32), np.zeros((0, 16), np.uint8))
        assert_same(idx, [absent, mixed, *images(3, 10, 128, words=30, k=32)])
        assert not idx.scores(absent, kernel="compiled").any()
        for kernel in ("compiled", "numpy"):
            ids, vals = idx.search(empty, 5, kernel=kernel)
            assert len(ids) == 5 and not vals.any()


@needs_numba
def test_regions_use_the_compiled_item_scores(tmp_path):
    regions = [[*images(1, 20 + i, 128), *images(2, 40 + i, 128, words=8)] for i in range(30)]
    with build(tmp_path, 128, [regions], aggregation="regions") as idx:
        assert idx.n_items == 90 and idx.n_images == 30
        assert_same(idx, images(4, 11, 128, words=40))


@needs_numba
def test_planted_duplicate_comes_first(tmp_path):
    db = images(300, 12, 128, words=30)
    q = db[123]
    flip = np.packbits(np.random.default_rng(13).random((len(q), 128)) < 0.1, axis=1)
    with build(tmp_path, 128, [db]) as idx:
        ids, vals = idx.search(AggregatedImage(q.words, q.codes ^ flip), 3, kernel="compiled")
    assert ids[0] == 123 and vals[0] > vals[1]


def test_kernel_choice_is_checked(tmp_path, monkeypatch):
    with build(tmp_path, 128, [images(5, 14, 128)]) as idx:
        with pytest.raises(ValueError, match="kernel must be one of"):
            InvertedFile.open(idx.root, kernel="fast")
        monkeypatch.setattr(scan, "AVAILABLE", False)
        with pytest.raises(MissingDependencyError, match="numba"):
            idx.search(images(1, 15, 128)[0], 3, kernel="compiled")
        ids, _ = idx.search(images(1, 15, 128)[0], 3)  # auto falls back to numpy
        assert len(ids) == 3


def test_thread_cuts_snap_to_segment_starts():
    np.testing.assert_array_equal(scan.thread_cuts(1000, [0, 450, 900], 2), [0, 450, 1000])
    np.testing.assert_array_equal(scan.thread_cuts(1000, [0, 300, 900], 2), [0, 500, 1000])  # too far: halves
    np.testing.assert_array_equal(scan.thread_cuts(1000, [0], 1), [0, 1000])
    np.testing.assert_array_equal(scan.thread_cuts(900, [0, 290, 610], 3), [0, 290, 610, 900])


def as_version_1(idx: InvertedFile) -> InvertedFile:
    """Rewrite every segment of ``idx`` (closed) in the version-1 layout (codes and item ids in two arrays,
    manifest version 1), as an older glocal wrote it; reopened writable."""
    root = idx.root
    idx.close()
    m = manifest.read_manifest(root)
    for e in m["segments"]:
        f = ArrayFile(root / e["file"])
        arrays = {k: np.array(v) for k, v in f.arrays.items()}
        meta = dict(f.meta)
        f.close()
        items, codes = record_views(arrays.pop("postings"))
        arrays |= {"items": np.ascontiguousarray(items), "codes": np.ascontiguousarray(codes)}
        e["crc32"] = write_arrays(root / e["file"], arrays, meta)
        e["bytes"] = (root / e["file"]).stat().st_size
    m["version"] = 1
    manifest.write_manifest(root, m)
    return InvertedFile.open(root, writable=True)


@needs_numba
def test_version_1_segments_score_the_same_and_upgrade(tmp_path):
    queries = images(5, 31, 128, words=50)
    with build(tmp_path, 128, [images(90, 32, 128), images(40, 33, 128)]) as idx:
        assert all(s.postings is not None and s.postings.shape[1] == 20 for s in idx.segments)
        new = [idx.scores(q, kernel="compiled") for q in queries]
    idx = as_version_1(idx)
    with idx:
        assert all(s.postings is None and s.codes.flags.c_contiguous for s in idx.segments)
        for q, ref in zip(queries, new):
            np.testing.assert_array_equal(idx.scores(q, kernel="compiled"), ref)  # both layouts, same scores
        assert_same(idx, queries)
        idx.add(images(30, 34, 128))  # a version-2 segment after two version-1 ones
        assert [s.postings is not None for s in idx.segments] == [False, False, True]
        assert manifest.read_manifest(idx.root)["version"] == 2
        idx.threads = 2
        assert_same(idx, queries)
        idx.remove([5, 100])
        assert idx.upgrade() == 2 and all(s.postings is not None for s in idx.segments)
        assert idx.upgrade() == 0
        assert_same(idx, queries)
        idx.compact()
        assert len(idx.segments) == 1 and idx.segments[0].postings is not None
        assert_same(idx, queries)


def test_records_hold_code_then_little_endian_id():
    items = np.array([0, 1, 258, 2**32 - 1], np.uint32)
    codes = np.arange(4 * 8, dtype=np.uint8).reshape(4, 8)
    rec = interleave(items, codes)
    assert rec.shape == (4, 12)
    np.testing.assert_array_equal(rec[2], [*range(16, 24), 2, 1, 0, 0])
    back_items, back_codes = record_views(rec)
    np.testing.assert_array_equal(back_items, items)
    np.testing.assert_array_equal(back_codes, codes)


@needs_numba
def test_budget_scans_the_shortest_lists_and_is_opt_in(tmp_path):
    db = images(150, 40, 128, words=40)
    with build(tmp_path, 128, [db[:90], db[90:]]) as idx:
        q = images(1, 41, 128, words=60)[0]
        lens = np.zeros(len(q))
        for s in idx.segments:
            for j, w in enumerate(q.words):
                k = np.searchsorted(s.words, w)
                if k < len(s.words) and s.words[k] == w:
                    lens[j] += s.bounds[k + 1] - s.bounds[k]
        exact = idx.search(q, 20)
        np.testing.assert_array_equal(idx.search(q, 20, budget=1.0)[1], exact[1])  # 1: exact, the default
        for b in (0.8, 0.5, 0.2):
            keep = scan.budget_words(idx.segments, np.asarray(q.words, np.int64), b)
            assert lens[keep].sum() <= b * lens.sum() < lens[keep].sum() + lens[~keep].min()
            assert lens[keep].max() <= lens[~keep].min()  # the shortest lists first
            ids, vals = idx.search(q, 20, budget=b)
            part = AggregatedImage(q.words[keep], q.codes[keep])
            ref = idx.scores(part, kernel="numpy").astype(np.float64) * np.sqrt(keep.sum() / len(q))
            np.testing.assert_allclose(vals, ref[ids], rtol=1e-6)  # the kept words' terms, exact normalisation
            assert set(ids[vals > 0].tolist()) <= set(np.flatnonzero(ref > 0).tolist())
        with InvertedFile.open(idx.root, budget=0.5) as approx:
            np.testing.assert_array_equal(approx.search(q, 20)[0], idx.search(q, 20, budget=0.5)[0])
        for bad in (0.0, 1.5):
            with pytest.raises(BadOptionError, match="budget"):
                idx.search(q, 5, budget=bad)
        with pytest.raises(BadOptionError, match="compiled"):
            idx.search(q, 5, kernel="numpy", budget=0.5)
    with pytest.raises(ValueError, match="asmk_budget"):
        SearchOptions(asmk_budget=0.0)


@needs_numba
@pytest.mark.parametrize("alpha", [3.0, 2.5])
def test_lists_scanned_in_pairs_only_where_the_order_cannot_matter(tmp_path, alpha):
    from glocal.index.kernel import selectivity_table

    assert scan.order_free(selectivity_table(128, 3.0, 0.0), None, 10_000)  # multiples of 2^-18
    assert not scan.order_free(selectivity_table(128, 2.5, 0.0), None, 10_000)
    assert not scan.order_free(selectivity_table(128, 3.0, 0.0), np.ones(64), 10_000)  # IDF weights
    with build(tmp_path, 128, [images(80, 50, 128), images(60, 51, 128)], alpha=alpha) as idx:
        idx.threads = 2
        assert scan.order_free(idx._table, None, 60) == (alpha == 3.0)
        assert_same(idx, images(5, 52, 128, words=50))


def test_index_compact_rewrites_an_older_glocals_postings_with_the_same_results(demo_benchmark, tmp_path):
    """``glocal index compact`` on an index whose ASMK* segments are in the version-1 layout (nothing removed):
    every segment is rewritten as records, the command says so, and searches answer exactly as before."""
    from typer.testing import CliRunner

    from glocal.cli.main import app
    from glocal.index.builder import build_index
    from glocal.search import Searcher

    paths, names = demo_benchmark.db_paths[:12], demo_benchmark.db_names[:12]
    index = tmp_path / "old.glx"
    build_index(paths, names, index, settings={"codebook_size": 64}, progress=False).collection.close()
    with Searcher.open(index) as s:
        before = [[(h.name, h.score, h.inliers) for h in s.search(p, top=12)] for p in paths[:3]]
        ivf = s.collection.stage.index
    as_version_1(InvertedFile.open(ivf.root, writable=True)).close()
    with InvertedFile.open(ivf.root) as old:
        assert old.segments and all(seg.postings is None for seg in old.segments)
    res = CliRunner().invoke(app, ["index", "compact", str(index)])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())  # (the console wraps long lines)
    assert "dropped 0 removed images, kept 12" in said and "1 posting segment rewritten in the current layout" in said
    with InvertedFile.open(ivf.root) as new:
        assert all(seg.postings is not None for seg in new.segments)
    with Searcher.open(index) as s:
        assert [[(h.name, h.score, h.inliers) for h in s.search(p, top=12)] for p in paths[:3]] == before
    res = CliRunner().invoke(app, ["index", "compact", str(index)])
    assert res.exit_code == 0 and "rewritten" not in res.output  # nothing left to rewrite
