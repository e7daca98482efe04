"""The extraction stage alone: feature shards, resumption, and indexes built from them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from glocal import methods
from glocal.cli.main import app
from glocal.errors import BadInputError, BadOptionError
from glocal.extract.backends import extract_to_shards
from glocal.extract.shards import MANIFEST, FeatureShards
from glocal.index.builder import build_from_features, build_index
from glocal.search import Searcher


def _default():
    spec = methods.get(methods.default_method())
    return spec, spec.configure({"max_keypoints": 300})


def test_shards_then_index_equals_building_from_images(demo_benchmark, tmp_path: Path) -> None:
    paths, names = demo_benchmark.db_paths[:12], demo_benchmark.db_names[:12]
    spec, options = _default()
    report = extract_to_shards(paths, names, tmp_path / "f", spec, options, shard_size=5)
    assert (report.extracted, report.written_shards, report.kept_shards) == (12, 3, 0)
    shards = FeatureShards.open(tmp_path / "f")
    assert len(shards) == 12 and shards.names() == set(names)
    from_shards = build_from_features(tmp_path / "f", tmp_path / "a.glx", settings={"codebook_size": 64},
                                      progress=False)
    direct = build_index(paths, names, tmp_path / "b.glx", settings={"codebook_size": 64, "max_keypoints": 300},
                         progress=False)
    a, b = Searcher(from_shards.collection), Searcher(direct.collection)
    assert a.names == b.names and a.collection.options == b.collection.options
    for q in (paths[2], paths[9]):
        assert [(h.name, h.score, h.inliers) for h in a.search(q, top=12)] == \
               [(h.name, h.score, h.inliers) for h in b.search(q, top=12)]
    assert a.collection.sources.lookup(names[4]) == Path(paths[4])
    a.close()
    b.close()


def test_an_interrupted_run_resumes_without_redoing_finished_shards(demo_benchmark, tmp_path: Path) -> None:
    paths, names = demo_benchmark.db_paths[:9], demo_benchmark.db_names[:9]
    spec, options = _default()
    out = tmp_path / "f"
    extract_to_shards(paths, names, out, spec, options, shard_size=4)
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["done"].remove("shard-00002.glf")  # as if killed while writing the last shard
    (out / MANIFEST).write_text(json.dumps(manifest))
    (out / "shard-00002.glf").write_bytes(b"half-written")
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-0000[01].glf")}
    report = extract_to_shards(paths, names, out, spec, options, shard_size=4)
    assert (report.kept_shards, report.written_shards, report.extracted) == (2, 1, 1)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-0000[01].glf")} == before
    assert len(FeatureShards.open(out)) == 9


def test_features_fix_the_extractor_options(demo_benchmark, tmp_path: Path) -> None:
    spec, options = _default()
    extract_to_shards(demo_benchmark.db_paths[:3], demo_benchmark.db_names[:3], tmp_path / "f", spec, options)
    with pytest.raises(BadOptionError, match="extract again"):
        build_from_features(tmp_path / "f", tmp_path / "x.glx", settings={"max_keypoints": 100}, progress=False)
    with pytest.raises(BadInputError, match="another method or other extractor options"):
        extract_to_shards(demo_benchmark.db_paths[:3], demo_benchmark.db_names[:3], tmp_path / "f", spec,
                          spec.defaults)
    with pytest.raises(BadInputError, match="not a features folder"):
        build_from_features(tmp_path, tmp_path / "y.glx", progress=False)
    assert not (tmp_path / "x.glx").exists() and not (tmp_path / "y.glx").exists()


def test_cli_extract_then_build_from_features(demo_benchmark, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in demo_benchmark.db_paths[:6]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    runner = CliRunner()
    env = {"GLOCAL_PROGRESS": "0"}
    res = runner.invoke(app, ["extract", str(folder), "--out", str(tmp_path / "f"), "--shard-size", "4"], env=env)
    assert res.exit_code == 1 and "broken.jpg" in res.output  # done, one file skipped
    assert "extracted 6 images into 2 shards" in res.output
    res = runner.invoke(app, ["index", "build", "--features", str(tmp_path / "f"), "--out", str(tmp_path / "x.glx"),
                              "--codebook-size", "32"], env=env)
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["search", str(tmp_path / "x.glx"), str(demo_benchmark.db_paths[1]), "--json"], env=env)
    assert res.exit_code == 0 and json.loads(res.stdout)["results"][0]["name"] == demo_benchmark.db_paths[1].name
