from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from glocal.cli.main import app

runner = CliRunner()


@pytest.mark.parametrize("args", [[], ["index"], ["index", "build"], ["index", "add"], ["index", "info"], ["index", "remove"], ["index", "compact"],
                                  ["search"], ["demo"], ["eval"], ["datasets", "download"], ["visualize", "attention"], ["whiten"],
                                  ["weights", "list"], ["weights", "download"], ["methods"], ["methods", "show"],
                                  ["extract"], ["doctor"]])
def test_help_on_every_command(args: list[str]) -> None:
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


@pytest.fixture(scope="module")
def small_collection(demo_benchmark, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for p in demo_benchmark.db_paths[:30]:
        shutil.copy(p, folder / p.name)
    (folder / "sub").mkdir()
    (folder / "sub" / "broken.jpg").write_text("not a jpeg")
    return folder


def test_build_search_info_add(small_collection: Path, demo_benchmark, tmp_path: Path) -> None:
    idx = tmp_path / "my.glx"
    res = runner.invoke(app, ["index", "build", str(small_collection), "--out", str(idx), "--codebook-size", "256"],
                        env={"GLOCAL_PROGRESS": "0"})
    assert res.exit_code == 1, res.output  # partial: one bad file, the rest indexed
    assert "broken.jpg" in res.output and "indexed 30 images" in res.output

    query = demo_benchmark.db_paths[0]
    res = runner.invoke(app, ["search", str(idx), str(query), "--top", "5", "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.output)
    assert payload["results"][0]["name"] == query.name
    assert payload["results"][0]["inliers"] > 20 and len(payload["results"][0]["matches"]) > 20

    res = runner.invoke(app, ["search", str(idx), str(query), "--bbox", "10,10,200,200"])
    assert res.exit_code == 0 and query.name in res.output
    pictures = tmp_path / "pictures"
    res = runner.invoke(app, ["search", str(idx), str(query), "--top", "5", "--draw", str(pictures), "--draw-top", "2"])
    assert res.exit_code == 0, res.output
    drawn = sorted(pictures.glob("*.png"))
    assert [p.name[:3] for p in drawn] == ["01_", "02_"] and query.stem in drawn[0].name
    from PIL import Image

    with Image.open(drawn[0]) as im:  # query and result side by side, 320 px high
        assert im.size[1] == 320 and im.size[0] > 320
    res = runner.invoke(app, ["search", str(idx), str(query), "--dba", "3"])  # sift ranks with ASMK, not vectors
    assert res.exit_code == 2 and "database augmentation (dba)" in res.output  # BadOptionError

    res = runner.invoke(app, ["index", "info", str(idx), "--json"])
    info = json.loads(res.output)
    assert info["images"] == 30 and info["shortlist"]["words_per_image"] > 10
    assert info["shortlist"]["bytes_per_entry"] == 20  # 16-byte ASMK* code + image id

    extra = tmp_path / "more"
    extra.mkdir()
    for p in demo_benchmark.db_paths[30:33]:
        shutil.copy(p, extra / p.name)
    res = runner.invoke(app, ["index", "add", str(idx), str(extra)], env={"GLOCAL_PROGRESS": "0"})
    assert res.exit_code == 0, res.output
    assert "holds 33" in res.output

    res = runner.invoke(app, ["index", "remove", str(idx), query.name, "no-such-image.jpg"])
    assert res.exit_code == 1 and "no-such-image.jpg" in res.output and "holds 32" in res.output
    res = runner.invoke(app, ["search", str(idx), str(query), "--top", "5", "--json"])
    assert query.name not in [r["name"] for r in json.loads(res.output)["results"]]
    info = json.loads(runner.invoke(app, ["index", "info", str(idx), "--json"]).output)
    assert (info["images"], info["removed_images"]) == (32, 1)
    res = runner.invoke(app, ["index", "compact", str(idx)])
    assert res.exit_code == 0 and "dropped 1 removed images, kept 32" in res.output
    compacted = json.loads(runner.invoke(app, ["index", "info", str(idx), "--json"]).output)
    assert (compacted["images"], compacted["removed_images"]) == (32, 0)
    assert compacted["total_bytes"] < info["total_bytes"]

    reuse = tmp_path / "reuse.glx"  # a second index on the first one's codebook
    res = runner.invoke(app, ["index", "build", str(extra), "--out", str(reuse), "--codebook-from", str(idx)])
    assert res.exit_code == 0 and "indexed 3 images" in res.output, res.output
    res = runner.invoke(app, ["index", "build", str(extra), "--out", str(tmp_path / "bad.glx"), "--method", "how",
                              "--codebook-from", str(idx)])
    assert res.exit_code == 2 and "not for an ASMK index of 'how'" in res.output  # BadOptionError


def test_errors_have_reliable_exit_codes(tmp_path: Path, photo_path: Path) -> None:
    res = runner.invoke(app, ["search", str(tmp_path / "nope.glx"), str(photo_path)])
    assert res.exit_code == 3 and "no such index folder" in res.output
    res = runner.invoke(app, ["search", str(tmp_path), str(photo_path), "--bbox", "1,2,3"])
    assert res.exit_code == 2
    res = runner.invoke(app, ["index", "build", str(tmp_path / "empty"), "--out", str(tmp_path / "x.glx")])
    assert res.exit_code == 3 and "no such file or folder" in res.output
    assert not (tmp_path / "x.glx").exists()  # nothing half-built left behind
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_text("not a picture")
    (bad / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    res = runner.invoke(app, ["index", "build", str(bad), "--out", str(tmp_path / "y.glx")])
    assert res.exit_code == 3 and "nothing to index" in res.output and "a.jpg" in res.output
    assert not (tmp_path / "y.glx").exists()


def test_whiten_learns_and_saves_a_model(demo_benchmark, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import warnings

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = tmp_path / "imgs"
        folder.mkdir()
        for p in demo_benchmark.db_paths[:3]:
            shutil.copy(p, folder / p.name)
        out = tmp_path / "how_whitened.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = runner.invoke(app, ["whiten", str(folder), "--out", str(out), "--method", "how",
                                      "--features-per-image", "200"], env={"GLOCAL_PROGRESS": "0"})
        assert res.exit_code == 0, res.output
        assert out.exists() and "3 images" in res.output
        state = torch.load(out, weights_only=True, map_location="cpu")
        flat = state.get("state_dict", state)
        assert any("whiten" in k for k in flat)
    finally:
        torch.set_num_threads(threads)


def test_deep_method_without_torch_says_what_to_install(monkeypatch, tmp_path: Path, photo_path: Path) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # makes "import torch" fail as on a lean install
    res = runner.invoke(app, ["index", "build", str(photo_path), "--out", str(tmp_path / "d.glx"), "--method", "delg"])
    assert res.exit_code == 4  # MissingDependencyError
    assert "needs torch" in res.output and "glocal[deep]" in res.output and len(res.output.splitlines()) == 1
    assert not (tmp_path / "d.glx").exists()
