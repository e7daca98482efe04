"""IVF-PQ training (capped samples, chunked assignment) and exact re-scoring of its shortlist."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from glocal.index import ivfpq_train
from glocal.index.global_files import MANIFEST
from glocal.index.global_index import GlobalIndex, GlobalIndexError, IvfPqParams


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(n: int, dim: int, clusters: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = _unit(rng.standard_normal((clusters, dim)))
    return _unit(centers[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, dim)))


def test_assign_in_chunks_is_the_nearest_centroid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ivfpq_train, "SCORE_BLOCK_BYTES", 4 * 50 * 64)  # 64-row chunks
    rng = np.random.default_rng(0)
    x, c = rng.standard_normal((1000, 12)).astype(np.float32), rng.standard_normal((50, 12)).astype(np.float32)
    got, err = ivfpq_train.assign(x, c)
    d = ((x[:, None, :].astype(np.float64) - c[None].astype(np.float64)) ** 2).sum(-1)
    assert np.array_equal(got, d.argmin(1))
    assert err == pytest.approx(d.min(1).sum(), rel=1e-4)


def test_training_sample_is_capped_per_cell_and_recorded(tmp_path: Path) -> None:
    x = _clustered(4000, 16, clusters=30, noise=0.2, seed=1)
    params = IvfPqParams(nlist=16, m=4, nprobe=4, train_size=10_000, train_per_cell=20, iterations=4,
                         pq_train_size=1000, pq_iterations=3)
    index = GlobalIndex(16, "ivfpq", params=params, threads=1)
    index.train(x)
    assert index.training["coarse_sample"] == 320 and index.training["points_per_cell"] == 20
    assert index.training["pq_sample"] == 1000 and index.training["coarse_iterations"] == 4
    index.add(x, np.arange(len(x)))
    index.save(tmp_path)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["training"]["coarse_sample"] == 320 and manifest["params"]["train_per_cell"] == 20
    assert GlobalIndex.open(tmp_path).training == index.training


def test_rescore_of_every_row_gives_the_exact_ranking(tmp_path: Path) -> None:
    x = _unit(np.random.default_rng(2).standard_normal((600, 16)))
    q = _unit(np.random.default_rng(3).standard_normal((20, 16)))
    ids = np.arange(600) * 3 + 1
    params = IvfPqParams(nlist=8, m=4, nprobe=8)  # every cell probed: all rows are candidates
    ivf = GlobalIndex.build(x, ids, "ivfpq", params=params, threads=1, rescore=600, storage="float32")
    exact = GlobalIndex.build(x, ids, "exact")
    want_ids, want_scores = exact.search(q, 50)
    plain, _ = ivf.search(q, 50, rescore=0)
    assert not np.array_equal(plain, want_ids)  # PQ scores alone reorder the list
    got_ids, got_scores = ivf.search(q, 50)
    assert np.array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-6)
    ivf.save(tmp_path)  # the vectors are memory-mapped from the saved segment: same answer
    reopened = GlobalIndex.open(tmp_path)
    assert isinstance(reopened._segments[0].vectors, np.memmap)
    assert np.array_equal(reopened.search(q, 50)[0], want_ids)


def test_rescore_improves_recall_over_plain_ivfpq() -> None:
    db = _clustered(3000, 32, clusters=40, noise=0.15, seed=6)
    rng = np.random.default_rng(7)
    queries = _unit(db[:100] + 0.075 * rng.standard_normal((100, 32)))
    params = IvfPqParams(nlist=32, m=4, nprobe=8)  # 4-byte codes: a coarse ranking
    ivf = GlobalIndex.build(db, np.arange(3000), "ivfpq", params=params, seed=0, threads=1, rescore=100,
                            storage="float16")
    want, _ = GlobalIndex.build(db, np.arange(3000), "exact").search(queries, 10)
    overlap = {k: np.mean([len(set(g) & set(w)) / 10 for g, w in zip(ivf.search(queries, 10, rescore=k)[0], want)])
               for k in (0, 100)}
    assert overlap[100] >= 0.95 and overlap[100] > overlap[0] + 0.1, overlap
    stats = ivf.stats()
    assert stats.rescore == 100 and stats.mapped_bytes == 3000 * 32 * 2  # float16 vectors kept


def test_rescore_needs_the_vectors_and_the_vectors_are_checksummed(tmp_path: Path) -> None:
    x = _clustered(1000, 16, clusters=10, noise=0.2, seed=4)
    params = IvfPqParams(nlist=8, m=4, nprobe=4)
    plain = GlobalIndex.build(x, np.arange(1000), "ivfpq", params=params, threads=1)
    with pytest.raises(GlobalIndexError, match="rescore"):
        plain.search(x[:2], 5, rescore=10)
    kept = GlobalIndex.build(x, np.arange(1000), "ivfpq", params=params, threads=1, rescore=20, storage="float16")
    assert np.array_equal(kept.vectors([5, 7]), x[[5, 7]].astype(np.float16).astype(np.float32))
    kept.save(tmp_path)
    vec = next(tmp_path.glob("seg-*.vec.npy"))
    data = bytearray(vec.read_bytes())
    data[-7] ^= 0x10
    vec.write_bytes(bytes(data))
    with pytest.raises(GlobalIndexError, match="damaged"):
        GlobalIndex.open(tmp_path)
