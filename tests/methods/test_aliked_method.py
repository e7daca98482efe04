"""The ``aliked`` method end to end through the CLI (a random-weight checkpoint with the release's layout),
its refusals without weights, and its published weights (checked against their pinned digests)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

from glocal import methods
from glocal.cli.main import app
from glocal.weights import REGISTRY, WeightsError, fetch

if TYPE_CHECKING:  # the server fixture lives in tests/conftest.py
    from conftest import FileServer

torch = pytest.importorskip("torch")

runner = CliRunner()
METHOD = "aliked"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain state dict with the n16 release's names and shapes (random weights, trained batch-norm-like
    statistics left at their defaults)."""
    from glocal.models.aliked import ARCHS, Aliked

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("aliked") / "aliked-n16.pth"
    torch.save(Aliked(ARCHS["n16"]).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def photos(demo_benchmark, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("aliked-photos")
    for p in demo_benchmark.db_paths[:8]:
        shutil.copy(p, folder / p.name)
    return folder


def test_build_and_search_through_the_cli(checkpoint: Path, photos: Path, demo_benchmark, tmp_path: Path) -> None:
    idx = tmp_path / "a.glx"
    res = runner.invoke(app, ["index", "build", str(photos), "--out", str(idx), "--method", METHOD,
                              "--codebook-size", "16", "--set", f"checkpoint={checkpoint}", "--set", "max_side=160",
                              "--set", "score_threshold=0", "--set", "max_keypoints=300"],
                        env={"GLOCAL_PROGRESS": "0"})
    assert res.exit_code == 0, res.output
    assert "indexed 8 images" in res.output
    manifest = json.loads((idx / "manifest.json").read_text())
    assert manifest["method"] == METHOD and manifest["options"]["extractor"]["checkpoint"] == str(checkpoint)
    query = demo_benchmark.db_paths[2]
    res = runner.invoke(app, ["search", str(idx), str(query), "--top", "3", "--json"])
    assert res.exit_code == 0, res.output
    best = json.loads(res.output)["results"][0]
    # the database copy of the query: identical features, so it is first with verified matches
    assert best["name"] == query.name and best["inliers"] > 0


def test_without_weights_the_cli_says_where_to_get_them(photos: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["index", "build", str(photos), "--out", str(tmp_path / "a.glx"), "--method", METHOD],
                        env={"GLOCAL_PROGRESS": "0"})
    assert res.exit_code == 3, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: method 'aliked' needs the ALIKED weights")
    assert "--checkpoint aliked-n16" in lines[0] and "--set checkpoint=" in lines[0]
    res = runner.invoke(app, ["index", "build", str(photos), "--out", str(tmp_path / "b.glx"), "--method", METHOD,
                              "--set", f"checkpoint={tmp_path / 'nope.pth'}"], env={"GLOCAL_PROGRESS": "0"})
    assert res.exit_code == 3 and len(res.output.strip().splitlines()) == 1 and "not found" in res.output


def test_published_weights_are_the_release_files_with_pinned_digests(
        server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checkpoint: Path) -> None:
    spec = methods.get(METHOD)
    names = {w.name for w in spec.weights}
    assert names == {"aliked-t16", "aliked-n16", "aliked-n16rot", "aliked-n32"}
    for name in names:
        w = REGISTRY[name]
        assert w.method == METHOD and w.url == f"https://github.com/Shiaoming/ALIKED/raw/main/models/{name}.pth"
        assert w.sha256 is not None and len(w.sha256) == 64
    # a mirror serving another file under the release name: refused by its digest, nothing kept
    monkeypatch.setenv("GLOCAL_WEIGHTS_URL", f"{server.url}/mirror")
    monkeypatch.setenv("GLOCAL_CACHE", str(tmp_path / "cache"))
    server.files["/mirror/aliked-n16.pth"] = checkpoint.read_bytes()
    with pytest.raises(WeightsError, match="aliked-n16"):
        fetch("aliked-n16", progress=False)
    assert not (tmp_path / "cache" / "weights" / "aliked-n16.pth").exists()
