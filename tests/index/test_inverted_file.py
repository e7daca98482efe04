"""Persistence of the ASMK inverted file: round trip, add/remove/reopen, compaction, crashes, checksums."""
from __future__ import annotations

import numpy as np
import pytest

from glocal.index import manifest as mf
from glocal.index.asmk import AggregatedImage, AsmkIndex
from glocal.index.codebook import Codebook
from glocal.index.inverted_file import IndexSettings, InvertedFile
from glocal.index.segment_file import SegmentFileError
from glocal.index.stats import index_stats

D, K = 32, 64


def random_images(n: int, seed: int, words: int = 20) -> list[AggregatedImage]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w = np.sort(rng.choice(K, int(rng.integers(1, words)), replace=False)).astype(np.int32)
        out.append(AggregatedImage(w, rng.integers(0, 256, (len(w), D // 8), dtype=np.uint8)))
    return out


@pytest.fixture()
def codebook():
    return Codebook(np.random.default_rng(0).standard_normal((K, D)).astype(np.float32), {"seed": 0})


def reference_scores(images, query, removed=()):
    mem = AsmkIndex(Codebook(np.zeros((K, D), np.float32)), binary=True)
    mem.add(images)
    s = mem.scores(query)
    s[list(removed)] = -np.inf
    return s


def test_round_trip_and_incremental_adds(tmp_path, codebook):
    images, query = random_images(40, 1), random_images(1, 99, 40)[0]
    with InvertedFile.create(tmp_path / "ivf", codebook) as idx:
        assert list(idx.add(images[:25])) == list(range(25))
        assert list(idx.add(images[25:])) == list(range(25, 40))
        before = idx.scores(query)
    with InvertedFile.open(tmp_path / "ivf") as idx:
        assert len(idx) == 40 and len(idx.segments) == 2
        np.testing.assert_array_equal(idx.codebook.centroids, codebook.centroids)
        assert idx.codebook.info == {"seed": 0}
        np.testing.assert_allclose(idx.scores(query), before)
        np.testing.assert_allclose(idx.scores(query), reference_scores(images, query), atol=1e-6)


def test_search_top_k_matches_full_sort(tmp_path, codebook):
    images, query = random_images(200, 2), random_images(1, 98, 60)[0]
    with InvertedFile.create(tmp_path / "ivf", codebook) as idx:
        idx.add(images)
        s = idx.scores(query)
        ids, scores = idx.search(query, top=17)
    full = np.lexsort((np.arange(len(s)), -s))[:17]
    np.testing.assert_array_equal(ids, full)
    np.testing.assert_allclose(scores, s[full])


def test_remove_reopen_and_compact(tmp_path, codebook):
    images, query = random_images(30, 3), random_images(1, 97, 60)[0]
    with InvertedFile.create(tmp_path / "ivf", codebook) as idx:
        idx.add(images[:10])
        idx.add(images[10:20])
        idx.add(images[20:])
        idx.remove([3, 15])
        idx.remove([27])
    with InvertedFile.open(tmp_path / "ivf", writable=True) as idx:
        assert len(idx) == 27
        want = reference_scores(images, query, removed=[3, 15, 27])
        np.testing.assert_allclose(idx.scores(query), want, atol=1e-6)
        ids, _ = idx.search(query, top=30)
        assert len(ids) == 27 and not {3, 15, 27} & set(ids.tolist())
        entries_before = sum(s.entry["entries"] for s in idx.segments)
        idx.compact()
        assert len(idx.segments) == 1
        assert idx.segments[0].entry["entries"] == entries_before - sum(len(images[i]) for i in (3, 15, 27))
        np.testing.assert_allclose(idx.scores(query), want, atol=1e-6)
        assert idx.add(random_images(2, 4)).tolist() == [30, 31]  # ids are never reused
    with InvertedFile.open(tmp_path / "ivf") as idx:
        np.testing.assert_allclose(idx.scores(query)[:30], want, atol=1e-6)
        assert sorted(p.name for p in (tmp_path / "ivf").glob("*.gls")) == sorted(
            ["codebook.gls", idx._manifest["tombstones"]["file"]] + [s.entry["file"] for s in idx.segments])


def test_automatic_merge_keeps_segment_count_bounded(tmp_path, codebook):
    images, query = random_images(60, 5), random_images(1, 96, 60)[0]
    with InvertedFile.create(tmp_path / "ivf", codebook, IndexSettings(max_segments=4)) as idx:
        for i in range(0, 60, 3):
            idx.add(images[i:i + 3])
            assert len(idx.segments) <= 4
        np.testing.assert_allclose(idx.scores(query), reference_scores(images, query), atol=1e-6)


def test_crash_before_manifest_replace_keeps_last_commit(tmp_path, codebook, monkeypatch):
    images, query = random_images(20, 6), random_images(1, 95, 60)[0]
    idx = InvertedFile.create(tmp_path / "ivf", codebook)
    idx.add(images[:12])
    committed = idx.scores(query)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed between the segment write and the manifest swap")

    monkeypatch.setattr(mf.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        idx.add(images[12:])
    monkeypatch.undo()
    idx.close()
    leftovers = sorted(p.name for p in (tmp_path / "ivf").iterdir())
    assert "seg-00000002.gls" in leftovers and "MANIFEST.json.tmp" in leftovers  # written, never committed
    with InvertedFile.open(tmp_path / "ivf", writable=True) as idx:  # the writer cleans up
        assert len(idx) == 12
        np.testing.assert_allclose(idx.scores(query), committed)
        assert not (tmp_path / "ivf" / "seg-00000002.gls").exists()
        idx.add(images[12:])
        np.testing.assert_allclose(idx.scores(query), reference_scores(images, query), atol=1e-6)


def test_truncated_segment_is_reported(tmp_path, codebook):
    with InvertedFile.create(tmp_path / "ivf", codebook) as idx:
        idx.add(random_images(10, 7))
        name = idx.segments[0].entry["file"]
    path = tmp_path / "ivf" / name
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(SegmentFileError, match=f"{name}.*truncated"):
        InvertedFile.open(tmp_path / "ivf")


@pytest.mark.parametrize("verify", ["full", "lazy"])
def test_checksum_mismatch_is_detected(tmp_path, codebook, verify):
    query = random_images(1, 94, 60)[0]
    with InvertedFile.create(tmp_path / "ivf", codebook) as idx:
        idx.add(random_images(10, 8))
        seg = idx.segments[0]
        offset = seg.file._table["postings"]["offset"] + 5
        name = seg.entry["file"]
    path = tmp_path / "ivf" / name
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))
    if verify == "full":
        with pytest.raises(SegmentFileError, match=f"{name}: checksum mismatch"):
            InvertedFile.open(tmp_path / "ivf", verify=verify)
    else:
        idx = InvertedFile.open(tmp_path / "ivf", verify=verify)
        with pytest.raises(SegmentFileError, match="checksum mismatch"):
            idx.search(query)
        idx.close()
    InvertedFile.open(tmp_path / "ivf", verify="size").close()  # sizes and headers are still fine


def test_one_writer_at_a_time_and_read_only(tmp_path, codebook):
    with InvertedFile.create(tmp_path / "ivf", codebook) as idx:
        with pytest.raises(mf.IndexFormatError, match="another process"):
            InvertedFile.open(tmp_path / "ivf", writable=True)
        idx.add(random_images(3, 9))
    with InvertedFile.open(tmp_path / "ivf") as ro, pytest.raises(PermissionError):
        ro.add(random_images(1, 10))


def test_errors_name_the_problem(tmp_path, codebook):
    with pytest.raises(mf.IndexFormatError, match="no MANIFEST.json"):
        InvertedFile.open(tmp_path)
    with InvertedFile.create(tmp_path / "ivf", codebook) as idx:
        bad = AggregatedImage(np.array([1, 1], np.int32), np.zeros((2, D // 8), np.uint8))
        with pytest.raises(ValueError, match="same visual word twice"):
            idx.add([bad])
        with pytest.raises(ValueError, match="binary=False"):
            idx.add([AggregatedImage(np.array([1], np.int32), np.zeros((1, D), np.float32))])
        with pytest.raises(IndexError, match=r"\[0, 0\)"):
            idx.remove([0])
    with pytest.raises(FileExistsError):
        InvertedFile.create(tmp_path / "ivf", codebook)


def test_index_stats(tmp_path, codebook):
    images = random_images(50, 11)
    with InvertedFile.create(tmp_path / "ivf", codebook) as idx:
        idx.add(images)
        idx.remove([0])
        st = index_stats(idx)
    assert st.images == 49 and st.removed == 1 and st.kind == "ASMK*"
    assert st.entries == sum(len(i) for i in images)
    assert st.words_per_image == pytest.approx(np.mean([len(i) for i in images[1:]]))
    assert st.bytes_per_entry == D // 8 + 4
    mem = AsmkIndex(codebook, binary=True)
    mem.add(images)
    assert index_stats(mem).words_per_image == pytest.approx(np.mean([len(i) for i in images]))


def test_fast_quantizer_is_stored_with_the_codebook(tmp_path, codebook):
    from glocal.index.quantizer import build_coarse_quantizer

    q = build_coarse_quantizer(codebook, cells=8, nprobe=2, seed=0)
    q = type(q)(q.codebook, q.coarse, q.order, q.bounds, nprobe=2, threads=1, nprobe_multi=5, info={"x": 1})
    with InvertedFile.create(tmp_path / "ivf", codebook, quantizer=q) as idx:
        idx.add(random_images(3, 1))
    with InvertedFile.open(tmp_path / "ivf") as idx:
        back = idx.quantizer
        assert back is not None and (back.nprobe, back.nprobe_multi, back.threads) == (2, 5, 1)
        np.testing.assert_array_equal(back.order, q.order)
        x = np.random.default_rng(3).standard_normal((50, D)).astype(np.float32)
        np.testing.assert_array_equal(back.assign(x, 3), q.assign(x, 3))
