"""An interrupted ``index build`` leaves no half-written folder, and a killed build's leftover is cleaned up."""
from __future__ import annotations

import subprocess
import sys

import pytest

from glocal.errors import BadInputError
from glocal.index.builder import BUILDING_SUFFIX, build_index

pytestmark = pytest.mark.faults

SETTINGS = {"codebook_size": 16}


def _listing(folder) -> list[str]:
    """Names in ``folder`` but the writer-lock files beside index folders (``.<name>.lock``, never deleted)."""
    return sorted(p.name for p in folder.iterdir() if not (p.name.startswith(".") and p.name.endswith(".lock")))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftover_of_a_killed_build_is_removed_by_the_next_build(demo_benchmark, tmp_path):
    out = tmp_path / "demo.glx"
    leftover = tmp_path / f"demo.glx{BUILDING_SUFFIX}{_dead_pid()}"
    (leftover / "ivf").mkdir(parents=True)
    (leftover / "features.glf").write_bytes(b"GLOCALFF half written")
    other = tmp_path / f"other.glx{BUILDING_SUFFIX}{_dead_pid()}"  # another index's leftover: not ours to touch
    other.mkdir()
    paths, names = demo_benchmark.db_paths[:6], demo_benchmark.db_names[:6]
    result = build_index(paths, names, out, settings=SETTINGS, progress=False)
    try:
        assert result.collection.root == out
        assert len(result.collection) == 6
    finally:
        result.collection.close()
    assert not leftover.exists()
    assert other.exists()
    assert _listing(tmp_path) == sorted(["demo.glx", other.name])
    assert (out / "manifest.json").is_file() and (out / "ivf").is_dir()


def test_a_live_build_folder_is_left_alone(demo_benchmark, tmp_path):
    import os

    busy = tmp_path / f"demo.glx{BUILDING_SUFFIX}{os.getppid()}"  # a live process (our parent)
    busy.mkdir()
    build_index(demo_benchmark.db_paths[:4], demo_benchmark.db_names[:4], tmp_path / "demo.glx",
                settings=SETTINGS, progress=False).collection.close()
    assert busy.exists()


def test_a_failed_build_leaves_nothing(tmp_path):
    bad = []
    for i in range(3):
        p = tmp_path / "in" / f"bad{i}.jpg"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"not an image")
        bad.append(p)
    out = tmp_path / "out" / "demo.glx"
    with pytest.raises(BadInputError, match="nothing to index"):
        build_index(bad, [p.stem for p in bad], out, settings=SETTINGS, progress=False)
    assert not out.exists()
    assert _listing(out.parent) == []


def test_a_failed_build_into_an_empty_folder_leaves_it_empty(tmp_path):
    p = tmp_path / "bad.jpg"
    p.write_bytes(b"not an image")
    out = tmp_path / "demo.glx"
    out.mkdir()
    with pytest.raises(BadInputError):
        build_index([p], ["bad"], out, settings=SETTINGS, progress=False)
    assert out.is_dir() and list(out.iterdir()) == []
    assert _listing(tmp_path) == ["bad.jpg", "demo.glx"]
