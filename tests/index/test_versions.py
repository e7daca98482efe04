"""One version scheme: every format answers newer / older / missing versions the same way, and an index
written before the method registry (manifest version 2) opens and searches as before."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from glocal.errors import DamagedIndexError
from glocal.index.builder import build_index
from glocal.index.collection import Collection
from glocal.io.versions import FORMATS, check_version
from glocal.search import Searcher


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_answers_the_same_way(name: str) -> None:
    fmt = FORMATS[name]
    assert check_version(name, fmt.version, "f", ValueError) == fmt.version
    with pytest.raises(ValueError, match="newer than this glocal reads.*upgrade glocal"):
        check_version(name, fmt.version + 1, "f", ValueError)
    with pytest.raises(ValueError, match="too old"):
        check_version(name, fmt.oldest - 1, "f", ValueError)
    with pytest.raises(ValueError, match="without an integer version"):
        check_version(name, "1", "f", ValueError)


def _as_version_2(manifest: dict) -> dict:
    """The manifest the same index had when written by glocal before the registry (format version 2)."""
    o = manifest["options"]
    return {"format": "glocal-index", "version": 2, "method": manifest["method"], "extractor": o["extractor"],
            "regions": None, "shortlist": "asmk",
            "asmk": {k: o["index"][k] for k in ("binary", "alpha", "tau", "db_assignments", "query_assignments",
                                                "codebook_size", "codebook_descriptors_per_image", "aggregation")},
            "rerank": {"top": o["rerank"]["rerank_top"],
                       "matcher": {"ratio": o["rerank"]["ratio"], "max_distance": None, "mutual": True},
                       "verifier": {"model": "affine", "method": o["rerank"]["estimator"], "threshold_px": 20.0,
                                    "max_iters": 1000, "seed": 0}},
            "codebook": manifest["codebook"]}


def test_a_version_2_index_opens_searches_the_same_and_is_upgraded_by_a_writer(demo_benchmark, tmp_path: Path) -> None:
    paths, names = demo_benchmark.db_paths[:12], demo_benchmark.db_names[:12]
    index = tmp_path / "old.glx"
    build_index(paths, names, index, settings={"codebook_size": 64}, progress=False).collection.close()
    with Searcher.open(index) as s:
        before = [(h.name, h.score, h.inliers) for h in s.search(paths[4], top=12)]
        options = s.collection.options
    manifest = json.loads((index / "manifest.json").read_text())
    (index / "manifest.json").write_text(json.dumps(_as_version_2(manifest)))
    with Searcher.open(index) as s:  # a reader upgrades in memory only
        assert s.collection.options == options
        assert [(h.name, h.score, h.inliers) for h in s.search(paths[4], top=12)] == before
    assert json.loads((index / "manifest.json").read_text())["version"] == 2
    Collection.open(index, writable=True).close()  # a writer writes the upgraded manifest
    assert json.loads((index / "manifest.json").read_text())["version"] == 3


@pytest.mark.parametrize("version, message", [(1, "too old.*rebuild the index"), (9, "newer.*upgrade glocal")])
def test_other_index_versions_are_refused_with_what_to_do(demo_benchmark, tmp_path: Path, version: int,
                                                          message: str) -> None:
    index = tmp_path / "x.glx"
    build_index(demo_benchmark.db_paths[:4], demo_benchmark.db_names[:4], index, settings={"codebook_size": 16},
                progress=False).collection.close()
    manifest = json.loads((index / "manifest.json").read_text())
    (index / "manifest.json").write_text(json.dumps(manifest | {"version": version}))
    with pytest.raises(DamagedIndexError, match=message):
        Collection.open(index)
