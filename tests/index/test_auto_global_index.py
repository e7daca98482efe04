"""``index=auto`` (the global methods' default): exact search for a small collection, IVF-PQ from the
threshold on; the choice is made at the first build, recorded in the manifest and shown by ``index info``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from glocal import methods
from glocal.cli.main import app
from glocal.index.collection import Collection
from glocal.index.collection_manifest import new_manifest, write_manifest
from glocal.index.global_stage import choose_kind
from glocal.io.feature_file import FeatureFile
from glocal.methods import stages
from glocal.records import ImageFeatures


def _global_spec():
    return next(s for s in methods.all_specs() if s.first_stage == "global")


def _collection(root: Path, n: int, dim: int = 32) -> Collection:
    """A collection of ``n`` images with clustered unit global descriptors, made as the builder makes one:
    features committed, manifest written, then opened for writing (which indexes them)."""
    rng = np.random.default_rng(0)
    x = np.repeat(rng.normal(size=(20, dim)), -(-n // 20), axis=0)[:n] + 0.3 * rng.normal(size=(n, dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    empty = np.zeros((0, 2), np.float32)
    root.mkdir()
    features = FeatureFile(root / "features.glf", writable=True)
    features.append([ImageFeatures(f"im{i}.jpg", (10, 10), np.zeros((0, 8), np.float32), empty,
                                   np.zeros(0, np.float32), np.zeros(0, np.float32), v[None]) for i, v in enumerate(x)])
    features.close()
    spec = _global_spec()
    write_manifest(root, new_manifest(spec, spec.defaults))
    return Collection.open(root, writable=True)


def test_global_methods_default_to_auto() -> None:
    assert _global_spec().defaults.index.index == "auto"


def test_choose_kind_by_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: IVF-PQ once images x dim x 4 bytes reach the threshold (97,657 images of 2048-D at 800 MB)."""
    monkeypatch.setattr(stages, "AUTO_IVFPQ_BYTES", 800_000_000)
    assert choose_kind("auto", 1000, 2048) == "exact"
    assert choose_kind("auto", 97_657, 2048) == "ivfpq" and choose_kind("auto", 97_656, 2048) == "exact"
    assert choose_kind("auto", 97_657, 512) == "exact" and choose_kind("auto", 390_625, 512) == "ivfpq"
    assert choose_kind("exact", 10**9, 2048) == "exact" and choose_kind("ivfpq", 300, 8) == "ivfpq"
    monkeypatch.setattr(stages, "AUTO_IVFPQ_BYTES", 10)
    assert choose_kind("auto", 255, 2048) == "exact"  # never below the 256 vectors a product quantizer trains on
    assert choose_kind("auto", 256, 2048) == "ivfpq"


def test_auto_picks_exact_for_a_small_collection(tmp_path: Path) -> None:
    with _collection(tmp_path / "small.glx", 300) as c:
        assert c.stage.index.kind == "exact" and len(c) == 300
        assert c.manifest["global_index"] == {"requested": "auto", "chosen": "exact", "images_at_choice": 300,
                                              "dim": 32, "auto_ivfpq_bytes": stages.AUTO_IVFPQ_BYTES}
    info = json.loads(CliRunner().invoke(app, ["index", "info", str(tmp_path / "small.glx"), "--json"]).output)
    assert info["shortlist"]["kind"] == "exact" and info["shortlist"]["requested"] == "auto"
    assert info["global_index"].startswith("exact (auto: 300 images x 32-D")


def test_auto_picks_ivfpq_above_the_threshold_and_keeps_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stages, "AUTO_IVFPQ_BYTES", 300 * 32 * 4)  # lowered: 300 images of 32-D reach it
    with _collection(tmp_path / "big.glx", 300) as c:
        assert c.stage.index.kind == "ivfpq" and len(c) == 300
        query = c.features[7]
    monkeypatch.setattr(stages, "AUTO_IVFPQ_BYTES", 10**12)  # the choice stays whatever the threshold now says
    with Collection.open(tmp_path / "big.glx") as c:
        assert c.stage.index.kind == "ivfpq" and c.manifest["global_index"]["chosen"] == "ivfpq"
        ids, _ = c.stage.search(query, top=5, options=stages.SearchOptions())
        assert 7 in ids.tolist()
    res = CliRunner().invoke(app, ["index", "info", str(tmp_path / "big.glx")], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "ivfpq (auto: 300 images x 32-D at the first build; ivfpq from 38,400 bytes" in res.output


def test_ivfpq_collection_shows_rescore_and_training_and_verify_sees_a_damaged_vector_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from glocal.index.verify import verify_index

    monkeypatch.setattr(stages, "AUTO_IVFPQ_BYTES", 300 * 32 * 4)
    with _collection(tmp_path / "big.glx", 300) as c:
        query = c.features[11]
        exact_order = np.argsort(-(np.stack([c.features[i].global_descriptor[0] for i in range(300)])
                                   @ query.global_descriptor[0]))[:5]
        ids, _ = c.stage.search(query, top=5, options=stages.SearchOptions())
        assert ids.tolist() == exact_order.tolist()  # K = 256 of 300 images re-scored: the exact top 5
    info = json.loads(CliRunner().invoke(app, ["index", "info", str(tmp_path / "big.glx"), "--json"]).output)
    shortlist = info["shortlist"]
    assert shortlist["rescore"] == stages.IVFPQ_RESCORE and shortlist["mapped_bytes"] == 300 * 32 * 2
    # 300 images: 7 cells (at least 39 images each), coarse k-means on the cap of 32 per cell, PQ on all 300
    assert shortlist["training"]["coarse_sample"] == 7 * 32 and shortlist["training"]["points_per_cell"] == 32
    assert shortlist["training"]["pq_sample"] == 300
    assert not verify_index(tmp_path / "big.glx").damage
    vec = next((tmp_path / "big.glx" / "global").glob("seg-*.vec.npy"))
    data = bytearray(vec.read_bytes())
    data[-3] ^= 0x01
    vec.write_bytes(bytes(data))
    damage = verify_index(tmp_path / "big.glx").damage
    assert [d.file for d in damage] == [f"global/{vec.name}"] and "checksum" in damage[0].detail
