"""Tests of the global-descriptor index: exact search, IVF-PQ recall, persistence, crash safety."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from glocal.index import global_index as gi
from glocal.index.global_index import GlobalIndex, GlobalIndexError, IvfPqParams, exact_top_k


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(n: int, dim: int, clusters: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = _unit(rng.standard_normal((clusters, dim)))
    return _unit(centers[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, dim)))


def _brute(queries: np.ndarray, db: np.ndarray, ids: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries.astype(np.float64) @ db.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top]
    return ids[order], np.take_along_axis(scores, order, 1)


def test_exact_search_equals_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gi, "_CHUNK_BYTES", 4 * 32 * 100)  # 1,024-row chunks: exercise the top-k merge
    rng = np.random.default_rng(0)
    db = _unit(rng.standard_normal((2600, 32)))
    ids = rng.permutation(10_000)[:2600].astype(np.int64)
    index = GlobalIndex(32)
    index.add(db[:1000], ids[:1000])
    index.add(db[1000:], ids[1000:])  # two segments
    queries = _unit(rng.standard_normal((300, 32)))  # more than one query batch
    got_ids, got_scores = index.search(queries, 15)
    want_ids, want_scores = _brute(queries, db, ids, 15)
    assert np.array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)
    rows, _ = exact_top_k(queries, db, 15)
    assert np.array_equal(ids[rows], want_ids)


def test_float16_storage_and_short_results() -> None:
    rng = np.random.default_rng(1)
    db = _unit(rng.standard_normal((50, 16)))
    index = GlobalIndex(16, storage="float16")
    index.add(db, np.arange(50))
    q = _unit(rng.standard_normal((4, 16)))
    got_ids, got_scores = index.search(q, 60)
    want_ids, want_scores = _brute(q, db.astype(np.float16), np.arange(50), 50)
    assert np.array_equal(got_ids[:, :50], want_ids)
    np.testing.assert_allclose(got_scores[:, :50], want_scores, atol=1e-5)
    assert (got_ids[:, 50:] == -1).all() and np.isneginf(got_scores[:, 50:]).all()
    assert index.stats().bytes_per_image == 2 * 16 + 8
    assert GlobalIndex(16).search(q, 3)[0].tolist() == [[-1] * 3] * 4  # empty index


def test_remove_add_and_errors() -> None:
    db = _unit(np.random.default_rng(2).standard_normal((20, 8)))
    index = GlobalIndex(8)
    index.add(db, np.arange(20) + 100)
    with pytest.raises(ValueError, match="already in the index"):
        index.add(db[:1], [105])
    with pytest.raises(KeyError, match="999"):
        index.remove([105, 999])
    assert index.remove([105, 999], missing_ok=True) == 1
    ids, _ = index.search(db[5], 20)
    assert 105 not in ids and len(index) == 19 and (ids[0, :19] >= 0).all()
    index.add(db[5:6], [105])  # a removed id may come back (as a new row)
    assert index.search(db[5], 1)[0][0, 0] == 105
    np.testing.assert_array_equal(index.vectors([105, 100]), db[[5, 0]])
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        index.add(np.zeros((2, 9), np.float32), [1, 2])


def test_persistence_round_trip_add_remove_reopen(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    db = _unit(rng.standard_normal((300, 24)))
    ids = np.arange(300) * 7
    q = _unit(rng.standard_normal((5, 24)))
    index = GlobalIndex(24, storage="float16")
    index.add(db[:200], ids[:200])
    index.save(tmp_path / "g")
    index.remove(ids[:10])
    index.save()
    again = GlobalIndex.open(tmp_path / "g")
    assert len(again) == 190 and again.storage == "float16"
    assert isinstance(again._segments[0].vectors, np.memmap)  # committed vectors are memory-mapped
    again.add(db[200:], ids[200:])
    again.remove(ids[250:260])
    again.save()
    final = GlobalIndex.open(tmp_path / "g")
    live = np.ones(300, bool)
    live[:10] = live[250:260] = False
    want, _ = _brute(q, db[live].astype(np.float16), ids[live], 10)
    assert np.array_equal(final.search(q, 10)[0], want)
    assert np.array_equal(np.sort(final.ids), np.sort(ids[live]))
    final.compact()
    final.save()
    assert np.array_equal(GlobalIndex.open(tmp_path / "g").search(q, 10)[0], want)
    names = sorted(p.name for p in (tmp_path / "g").iterdir())
    assert names == ["LOCK", "MANIFEST.json", "seg-000004.ids.npy", "seg-000004.vec.npy"]  # old files gone


def test_crash_before_manifest_swap_keeps_last_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    db = _unit(rng.standard_normal((40, 8)))
    index = GlobalIndex(8)
    index.add(db[:20], np.arange(20))
    index.save(tmp_path)
    index.add(db[20:], np.arange(20, 40))
    index.remove([0, 1])

    def crash(*args: object) -> None:
        raise OSError("simulated power cut")

    monkeypatch.setattr(gi.os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        index.save()
    monkeypatch.undo()
    reopened = GlobalIndex.open(tmp_path)  # the new data files exist, the manifest still names the old ones
    assert len(reopened) == 20 and sorted(reopened.ids.tolist()) == list(range(20))
    index.save()  # retry commits, and the next writer cleans up
    assert len(GlobalIndex.open(tmp_path)) == 38
    assert not (tmp_path / "MANIFEST.json.tmp").exists()


def test_checksum_mismatch_names_the_file(tmp_path: Path) -> None:
    index = GlobalIndex(8)
    index.add(_unit(np.random.default_rng(5).standard_normal((10, 8))), np.arange(10))
    index.save(tmp_path)
    vec = tmp_path / "seg-000001.vec.npy"
    data = bytearray(vec.read_bytes())
    data[-3] ^= 0xFF
    vec.write_bytes(bytes(data))
    with pytest.raises(GlobalIndexError, match=r"seg-000001\.vec\.npy: checksum mismatch"):
        GlobalIndex.open(tmp_path)
    GlobalIndex.open(tmp_path, verify=False)  # size still matches: opening without verification works
    vec.write_bytes(bytes(data[:-4]))
    with pytest.raises(GlobalIndexError, match=r"seg-000001\.vec\.npy: size"):
        GlobalIndex.open(tmp_path, verify=False)


def test_concurrent_commit_refused(tmp_path: Path) -> None:
    a = GlobalIndex(4)
    a.add(np.eye(4, dtype=np.float32), np.arange(4))
    a.save(tmp_path)
    b = GlobalIndex.open(tmp_path)
    b.remove([0])
    b.save()
    a.remove([1])
    with pytest.raises(GlobalIndexError, match="newer commit"):
        a.save()
    with pytest.raises(GlobalIndexError, match="another index"):
        GlobalIndex(4).save(tmp_path)


def test_ivfpq_recall_and_compaction(tmp_path: Path) -> None:
    db = _clustered(3000, 32, clusters=40, noise=0.15, seed=6)
    rng = np.random.default_rng(7)
    queries = _unit(db[:100] + 0.075 * rng.standard_normal((100, 32)))
    params = IvfPqParams(nlist=32, m=16, nbits=8, nprobe=4)
    index = GlobalIndex.build(db, np.arange(3000) + 5, "ivfpq", params=params, seed=0, threads=1)
    got, _ = index.search(queries, 10)
    want, _ = _brute(queries, db, np.arange(3000) + 5, 10)
    overlap = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want)])
    nn_found = np.mean([w[0] in g for g, w in zip(got, want)])
    assert overlap >= 0.85 and nn_found >= 0.95, (overlap, nn_found)
    stats = index.stats()
    assert stats.code_bytes == 16 and stats.images == 3000
    index.remove(got[:, 0])
    after, _ = index.search(queries, 10)
    assert not np.isin(got[:, 0], after).any()
    index.compact()  # renumbers the faiss ids: same results
    assert np.array_equal(index.search(queries, 10)[0], after)
    index.save(tmp_path)
    assert np.array_equal(GlobalIndex.open(tmp_path).search(queries, 10)[0], after)
    with pytest.raises(GlobalIndexError, match="trained"):
        GlobalIndex(32, "ivfpq").add(db[:2], [1, 2])


def test_ivfpq_defaults_by_size() -> None:
    small, large = IvfPqParams.for_size(5_000, 2048), IvfPqParams.for_size(1_000_000, 128)
    assert small.nlist == 128 and small.m == 128 and 2048 % small.m == 0
    assert large.nlist == 4096 and large.m == 32 and large.nprobe == 256
