"""The global first stage with alpha-QE / alpha-DBA options, against the formulas applied directly."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from glocal.index.global_stage import GlobalStage
from glocal.index.query_expansion import alpha_dba, alpha_qe
from glocal.index.topk import exact_top_k
from glocal.methods.stages import GlobalIndexOptions, SearchOptions
from glocal.records import ImageFeatures


def _features(vectors: np.ndarray) -> list[ImageFeatures]:
    empty = np.zeros((0, 2), np.float32)
    return [ImageFeatures(f"im{i}", (10, 10), np.zeros((0, 8), np.float32), empty, np.zeros(0, np.float32),
                          np.zeros(0, np.float32), v[None].astype(np.float32)) for i, v in enumerate(vectors)]


@pytest.fixture()
def clustered() -> np.ndarray:
    """60 unit vectors in 6 tight-ish clusters of 10 (so neighbours are meaningful)."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(6, 16))
    x = np.repeat(centres, 10, axis=0) + 0.6 * rng.normal(size=(60, 16))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_dba_search_equals_direct_formula(clustered: np.ndarray, tmp_path: Path) -> None:
    shortlist = GlobalStage.create(tmp_path, GlobalIndexOptions())
    feats = _features(clustered)
    shortlist.add(feats)
    augmented = alpha_dba(clustered, k=3, alpha=3.0)
    for qi in (0, 17, 42):
        ids, scores = shortlist.search(feats[qi], top=10, options=SearchOptions(dba=3))
        want_rows, want_scores = exact_top_k(clustered[qi][None], augmented, 10)
        np.testing.assert_array_equal(ids, want_rows[0])
        np.testing.assert_allclose(scores, want_scores[0], rtol=1e-5, atol=1e-6)
        _, plain_scores = shortlist.search(feats[qi], top=10, options=SearchOptions())
        assert not np.allclose(scores, plain_scores)  # DBA changes the scores
    # QE on top of DBA expands against the augmented vectors
    ids, scores = shortlist.search(feats[5], top=10, options=SearchOptions(qe=2, dba=3))
    q = alpha_qe(clustered[5][None], augmented, n=2, alpha=3.0)
    want_rows, want_scores = exact_top_k(q, augmented, 10)
    np.testing.assert_array_equal(ids, want_rows[0])
    np.testing.assert_allclose(scores, want_scores[0], rtol=1e-5, atol=1e-6)


def test_dba_follows_removals(clustered: np.ndarray, tmp_path: Path) -> None:
    shortlist = GlobalStage.create(tmp_path, GlobalIndexOptions())
    feats = _features(clustered)
    shortlist.add(feats)
    first, _ = shortlist.search(feats[7], top=5, options=SearchOptions(dba=2))
    assert first[0] == 7
    shortlist.remove([7])
    after, _ = shortlist.search(feats[7], top=5, options=SearchOptions(dba=2))
    assert 7 not in after.tolist()
    live = np.delete(np.arange(60), 7)
    augmented = alpha_dba(clustered[live], k=2, alpha=3.0)
    want_rows, _ = exact_top_k(clustered[7][None], augmented, 5)
    np.testing.assert_array_equal(after, live[want_rows[0]])
    # reopened from disk: same answer
    again = GlobalStage.open(tmp_path, GlobalIndexOptions())
    np.testing.assert_array_equal(again.search(feats[7], top=5, options=SearchOptions(dba=2))[0], after)


def test_dba_k1_is_plain_search(clustered: np.ndarray, tmp_path: Path) -> None:
    shortlist = GlobalStage.create(tmp_path, GlobalIndexOptions())
    feats = _features(clustered)
    shortlist.add(feats)
    a = shortlist.search(feats[3], top=8, options=SearchOptions(dba=1))
    b = shortlist.search(feats[3], top=8, options=SearchOptions())
    np.testing.assert_array_equal(a[0], b[0])


@pytest.mark.parametrize("aggregation", ["asmk", "r-asmk", "regions"])
def test_asmk_batch_add_equals_one_image_at_a_time(aggregation: str, tmp_path: Path) -> None:
    """AsmkStage.add quantises a batch's descriptors together; the index equals one built image by image."""
    from glocal.index.asmk_stage import AsmkStage
    from glocal.index.codebook import Codebook
    from glocal.index.inverted_file import InvertedFile
    from glocal.index.layout import IndexSettings
    from glocal.index.quantizer import build_coarse_quantizer
    from glocal.methods.stages import AsmkIndexOptions

    rng = np.random.default_rng(2)
    codebook = Codebook(rng.standard_normal((512, 16)).astype(np.float32))
    quantizer = build_coarse_quantizer(codebook, cells=16, nprobe=3, seed=0, threads=1)
    settings = IndexSettings(binary=True, aggregation=aggregation, db_assignments=2)
    feats = []
    for i, n in enumerate([80, 0, 120, 5, 60]):
        kp = rng.uniform(0, 100, (n, 2)).astype(np.float32)
        feats.append(ImageFeatures(f"im{i}", (100, 100), rng.standard_normal((n, 16)).astype(np.float32), kp,
                                   np.ones(n, np.float32), np.ones(n, np.float32),
                                   regions=np.array([[0, 0, 50, 50], [40, 40, 100, 90]], np.float32)))
    batched = AsmkStage(InvertedFile.create(tmp_path / "a", codebook, settings, quantizer=quantizer), AsmkIndexOptions())
    batched.add(feats)
    single = InvertedFile.create(tmp_path / "b", codebook, settings, quantizer=quantizer)
    single.add([single.aggregate_database(f) for f in feats])
    query = batched.index.aggregate_query(rng.standard_normal((200, 16)).astype(np.float32))
    assert batched.index.n_items == single.n_items > len(feats) * (aggregation == "regions")
    np.testing.assert_array_equal(batched.index.item_scores(query), single.item_scores(query))
    assert np.count_nonzero(single.item_scores(query)) > 0
    batched.close()
    single.close()


def test_ivfpq_stage_trains_on_the_collection_and_agrees_with_exact(tmp_path: Path) -> None:
    """index=ivfpq: trained once on the vectors it is prepared with, then codes are added; on clustered data
    its top result matches exact search for most queries, and it reopens from disk."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(40, 32))
    x = np.repeat(centres, 25, axis=0) + 0.3 * rng.normal(size=(1000, 32))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    feats = _features(x)
    exact = GlobalStage.create(tmp_path / "e", GlobalIndexOptions())
    approx = GlobalStage.create(tmp_path / "a", GlobalIndexOptions(index="ivfpq"))
    approx.prepare(x, expected_size=len(x))
    for start in range(0, 1000, 64):  # batches, as a collection adds them
        exact.add(feats[start:start + 64])
        approx.add(feats[start:start + 64])
    assert approx.index.kind == "ivfpq" and len(approx) == 1000
    same = sum(approx.search(feats[i], top=1, options=SearchOptions())[0][0]
               == exact.search(feats[i], top=1, options=SearchOptions())[0][0] for i in range(0, 1000, 10))
    assert same >= 80, same
    again = GlobalStage.open(tmp_path / "a", GlobalIndexOptions(index="ivfpq"))
    np.testing.assert_array_equal(again.search(feats[5], top=10, options=SearchOptions())[0],
                                  approx.search(feats[5], top=10, options=SearchOptions())[0])
    with pytest.raises(Exception, match="dba"):
        approx.search(feats[5], top=10, options=SearchOptions(dba=2))
