"""Tests of alpha-QE and alpha-DBA on global descriptors (Radenovic et al. PAMI 2018)."""
from __future__ import annotations

import numpy as np
import pytest

from glocal.index.global_index import GlobalIndex, exact_top_k
from glocal.index.query_expansion import QueryExpansion, alpha_dba, alpha_qe, expand_with_index


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _scene(seed: int, clusters: int = 30, per: int = 20, dim: int = 64, noise: float = 1.2):
    """Clusters of noisy views around a landmark vector (noise of norm ~``noise``); queries are noisier."""
    rng = np.random.default_rng(seed)
    centers = _unit(rng.standard_normal((clusters, dim)))
    labels = np.repeat(np.arange(clusters), per)
    db = _unit(centers[labels] + noise / np.sqrt(dim) * rng.standard_normal((len(labels), dim)))
    queries = _unit(centers + 1.25 * noise / np.sqrt(dim) * rng.standard_normal((clusters, dim)))
    return db, labels, queries


def _recall(queries: np.ndarray, db: np.ndarray, labels: np.ndarray, per: int) -> float:
    rows, _ = exact_top_k(queries, db, per)
    return float(np.mean(labels[rows] == np.arange(len(queries))[:, None]))


def test_n1_alpha0_is_the_query() -> None:
    rng = np.random.default_rng(0)
    db = _unit(rng.standard_normal((50, 16)))
    q = _unit(rng.standard_normal((3, 16)))
    np.testing.assert_allclose(alpha_qe(q, db, n=1, alpha=0.0), q, atol=1e-6)
    np.testing.assert_allclose(alpha_qe(2 * q, db, n=1, alpha=3.0), q, atol=1e-6)  # normalized


def test_formula_on_a_small_example() -> None:
    rng = np.random.default_rng(1)
    db = _unit(rng.standard_normal((6, 8)))
    q = _unit(rng.standard_normal((1, 8)))
    sims = (db @ q[0]).astype(np.float64)
    top = np.argsort(-sims)[:3]
    want = q[0] + sum(max(sims[i], 0.0) ** 3 * db[i] for i in top)
    want /= np.linalg.norm(want)
    np.testing.assert_allclose(alpha_qe(q, db, n=4, alpha=3.0)[0], want, atol=1e-5)
    # given ranks (e.g. from an index) give the same; -1 (missing) is left out
    ranks = np.array([[*top, -1]])
    np.testing.assert_allclose(alpha_qe(q, db, n=4, alpha=3.0, ranks=ranks), alpha_qe(q, db, n=4), atol=1e-6)
    with pytest.raises(ValueError, match="ranks"):
        alpha_qe(q, db, n=4, ranks=np.array([[0]]))


def test_qe_improves_recall_on_clustered_data() -> None:
    db, labels, queries = _scene(seed=2)
    before = _recall(queries, db, labels, 20)
    after = _recall(alpha_qe(queries, db, n=5, alpha=3.0), db, labels, 20)
    assert after > before + 0.05, (before, after)


def test_dba_rows_unit_norm_and_helps() -> None:
    db, labels, queries = _scene(seed=3)
    aug = alpha_dba(db, k=5, alpha=3.0, batch=128)
    np.testing.assert_allclose(np.linalg.norm(aug, axis=1), 1.0, atol=1e-5)
    assert _recall(queries, aug, labels, 20) > _recall(queries, db, labels, 20) + 0.05
    np.testing.assert_allclose(alpha_dba(2 * db, k=1), db, atol=1e-6)
    # neighbours given (self included at any position) equal the exact search
    rows, _ = exact_top_k(db, db, 5)
    np.testing.assert_allclose(alpha_dba(db, k=5, neighbours=rows[:, ::-1].copy()), aug, atol=1e-5)


def test_dba_skips_itself() -> None:
    db = _unit(np.array([[1, 0], [1, 0.1], [0, 1]], np.float32))
    aug = alpha_dba(db, k=2, alpha=1.0)
    s = float(db[0] @ db[1])
    want = db[0] + s * db[1]
    np.testing.assert_allclose(aug[0], want / np.linalg.norm(want), atol=1e-6)


def test_expand_with_index_matches_arrays() -> None:
    db, _, queries = _scene(seed=4, clusters=5, per=6)
    index = GlobalIndex(db.shape[1])
    index.add(db, np.arange(len(db)) + 1000)
    np.testing.assert_allclose(expand_with_index(index, queries, n=3), alpha_qe(queries, db, n=3), atol=1e-5)
    best = int(exact_top_k(queries[:1], db, 1)[0][0, 0])
    index.remove([1000 + best])  # removed images take no part
    live = np.arange(len(db)) != best
    np.testing.assert_allclose(expand_with_index(index, queries, n=3), alpha_qe(queries, db[live], n=3), atol=1e-5)


def test_options_validate() -> None:
    assert QueryExpansion().alpha == 3.0
    with pytest.raises(ValueError):
        QueryExpansion(n=0)
