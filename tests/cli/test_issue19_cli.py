"""Issue 19: ``index remove`` by the indexed path with near matches (item 5), whole names when ``search``'s
output is piped (item 8), ``glocal doctor`` (item 10)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from glocal.cli.main import app
from glocal.methods import all_specs

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]
LONG = "a_photo_name_long_enough_that_an_eighty_column_table_would_have_to_cut_it_somewhere_in_the_middle"


@pytest.fixture(scope="module")
def indexed(demo_benchmark, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """``photos/`` (with ``sub/``) indexed as ``my.glx``: returns (working folder, photos, index)."""
    from glocal.index.builder import build_index

    work = tmp_path_factory.mktemp("work")
    photos = work / "photos"
    (photos / "sub").mkdir(parents=True)
    paths = demo_benchmark.db_paths[:8]
    targets = [photos / p.name for p in paths[:5]] + [photos / "sub" / p.name for p in paths[5:7]]
    targets.append(photos / f"{LONG}.jpg")
    for src, dst in zip(paths, targets):
        shutil.copy(src, dst)
    names = [t.relative_to(photos).as_posix() for t in targets]
    index = work / "my.glx"
    build_index(targets, names, index, settings={"codebook_size": 64}, progress=False).collection.close()
    return work, photos, index


def _names(index: Path) -> set[str]:
    from glocal.index.collection import Collection

    with Collection.open(index) as c:
        return set(c.live_names().values())


def test_remove_accepts_the_indexed_path_and_the_stored_name(indexed, tmp_path: Path) -> None:
    work, photos, index = indexed
    copy = shutil.copytree(index, tmp_path / "my.glx")
    first, in_sub = sorted(p.name for p in photos.glob("*.jpg"))[0], next((photos / "sub").glob("*.jpg")).name
    cwd = os.getcwd()
    os.chdir(work)  # paths as the user typed them, relative to where they indexed from
    try:
        res = runner.invoke(app, ["index", "remove", str(copy), f"photos/{first}", f"sub/{in_sub}"])
    finally:
        os.chdir(cwd)
    assert res.exit_code == 0, res.output
    assert "removed 2 images" in res.output
    assert not {first, f"sub/{in_sub}"} & _names(copy)
    # an absolute path works from anywhere
    third = sorted(p for p in photos.glob("*.jpg"))[1]
    res = runner.invoke(app, ["index", "remove", str(copy), str(third)])
    assert res.exit_code == 0 and third.name not in _names(copy), res.output


def test_remove_path_ending_in_a_stored_name_when_the_file_moved(indexed, tmp_path: Path) -> None:
    _, photos, index = indexed
    copy = shutil.copytree(index, tmp_path / "my.glx")
    name = sorted(p.name for p in photos.glob("*.jpg"))[2]
    res = runner.invoke(app, ["index", "remove", str(copy), f"elsewhere/photos/{name}"])
    assert res.exit_code == 0 and name not in _names(copy), res.output


def test_remove_unknown_lists_near_matches(indexed, tmp_path: Path) -> None:
    _, photos, index = indexed
    copy = shutil.copytree(index, tmp_path / "my.glx")
    name = sorted(p.name for p in photos.glob("*.jpg"))[0]
    typo = name.replace(".jpg", "x.jpg")
    res = runner.invoke(app, ["index", "remove", str(copy), typo, "nothing_like_it.png"])
    assert res.exit_code == 1
    assert f"not in the index: {typo}; did you mean: {name}" in res.output
    assert "not in the index: nothing_like_it.png" in res.output and "removed 0 images" in res.output
    assert len(_names(copy)) == 8


def test_resolve_names_reports_ambiguity(tmp_path: Path) -> None:
    from glocal.index.names import resolve_names
    from glocal.io.sources import SourceLog

    log = SourceLog(tmp_path)
    match = resolve_names(["a.jpg", "x/a.jpg", "b.jpg"], log, ["y/x/a.jpg", "q/b.jpg", "b.jpg", "c.jpg"], cwd=tmp_path)
    assert match.found == {"q/b.jpg": "b.jpg", "b.jpg": "b.jpg"}
    assert match.ambiguous == {"y/x/a.jpg": ["a.jpg", "x/a.jpg"]}
    assert list(match.missing) == ["c.jpg"]


def test_search_piped_prints_whole_names(indexed) -> None:
    work, photos, index = indexed
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLOCAL_")} | {
        "PYTHONPATH": str(REPO), "GLOCAL_PROGRESS": "0", "COLUMNS": "80"}
    res = subprocess.run([sys.executable, "-m", "glocal", "search", str(index), str(photos / f"{LONG}.jpg"),
                          "--top", "3"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split("\t") == ["rank", "image", "verified", "inliers", "score", "shortlist score"]
    first = lines[1].split("\t")
    assert first[:3] == ["1", f"{LONG}.jpg", "yes"] and int(first[3]) > 0 and len(lines) == 4
    assert all(len(ln.split("\t")) == 6 for ln in lines)
    as_json = subprocess.run([sys.executable, "-m", "glocal", "search", str(index), str(photos / f"{LONG}.jpg"),
                              "--top", "3", "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert json.loads(as_json.stdout)["results"][0]["name"] == f"{LONG}.jpg"


def test_search_on_a_terminal_is_a_table_that_keeps_whole_names(indexed, monkeypatch: pytest.MonkeyPatch) -> None:
    from glocal.cli import search_cmd

    _, photos, index = indexed
    monkeypatch.setattr(search_cmd.out, "_force_terminal", True)
    monkeypatch.setattr(search_cmd.out, "_width", 60)
    res = runner.invoke(app, ["search", str(index), str(photos / f"{LONG}.jpg"), "--top", "2"])
    assert res.exit_code == 0, res.output
    rows = [ln.split("│") for ln in res.output.splitlines() if ln.count("│") == 7]
    assert rows, res.output  # a table: rank, image, verified, inliers, score, shortlist score
    assert "…" not in res.output  # folded over lines, never cut
    assert f"{LONG}.jpg" in "".join(r[2].strip() for r in rows)


def test_doctor_reports_every_registered_method_and_extra() -> None:
    from glocal.methods.spec import EXTRA_MODULES

    res = runner.invoke(app, ["doctor", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["glocal"] and report["python"] == sys.version.split()[0]
    assert set(EXTRA_MODULES) <= set(report["extras"])
    assert [m["method"] for m in report["methods"]] == [s.name for s in all_specs()]
    for m, spec in zip(report["methods"], all_specs()):
        assert m["extras"] == list(spec.extras) and m["needs_weights"] == spec.needs_weights
        assert set(m["published_weights"]) == {w.name for w in spec.weights}
    assert report["threads"]["cpu_count"] == os.cpu_count()
    assert report["folders"]["weights"]["path"].endswith("weights")
    text = runner.invoke(app, ["doctor"], env={"GLOCAL_TOKEN": "secret-value", "GLOCAL_CACHE": "/tmp/glocal-doc"})
    assert text.exit_code == 0
    for heading in ("packages:", "extras:", "threads:", "GPU:", "folders:", "methods:"):
        assert heading in text.output
    assert "/tmp/glocal-doc/weights" in text.output and "GLOCAL_TOKEN=set" in text.output
    assert "secret-value" not in text.output
    for spec in all_specs():
        assert spec.name in text.output


def test_doctor_gpu_line_for_each_case() -> None:
    """What ``glocal doctor`` says about GPUs, for the cases this machine cannot show (a report is plain data)."""
    from glocal.cli.doctor_cmd import _gpu_line

    assert _gpu_line({"installed": False}).startswith("unknown: PyTorch is not installed")
    assert _gpu_line({"installed": True, "error": "OSError: libcuda"}) == "unknown: PyTorch does not import (OSError: libcuda)"
    two = {"installed": True, "gpus": ["NVIDIA H200", "NVIDIA H200"], "cuda_build": "13.0"}
    assert _gpu_line(two) == "2 visible: NVIDIA H200, NVIDIA H200"
    assert _gpu_line({"installed": True, "gpus": [], "cuda_build": None}) == "none visible to PyTorch (CPU-only build)"
    assert _gpu_line({"installed": True, "gpus": [], "cuda_build": "13.0", "mps_available": True}).endswith("Apple MPS available")
