"""``glocal index verify [--repair]``: every checksummed file is checked, damage is named, a damaged ASMK
segment's images can be dropped."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from glocal.cli.main import app
from glocal.index.verify import verify_index
from glocal.io.feature_file import RecordFile

pytestmark = pytest.mark.faults

SETTINGS = {"codebook_size": 16}


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _verify(index: Path, *extra: str):
    return CliRunner().invoke(app, ["index", "verify", str(index), *extra])


@pytest.fixture(scope="module")
def asmk_index(demo_benchmark, tmp_path_factory) -> Path:
    """Six images in a first segment, four more in a second one."""
    from glocal.index.builder import add_images, build_index

    out = tmp_path_factory.mktemp("verify") / "demo.glx"
    paths, names = demo_benchmark.db_paths, demo_benchmark.db_names
    collection = build_index(paths[:6], names[:6], out, settings=SETTINGS, progress=False).collection
    try:
        add_images(collection, paths[6:10], names[6:10], progress=False)
    finally:
        collection.close()
    return out


@pytest.fixture
def copy(asmk_index, tmp_path) -> Path:
    out = tmp_path / "copy.glx"
    shutil.copytree(asmk_index, out, ignore=shutil.ignore_patterns("*LOCK"))
    return out


def _segments(index: Path) -> list[Path]:
    return sorted((index / "ivf").glob("seg-*.gls"))


def test_clean_index_exits_0(copy):
    assert len(_segments(copy)) == 2
    result = _verify(copy)
    assert result.exit_code == 0, result.output
    assert "no damage" in result.output
    assert verify_index(copy).ok


def test_damaged_feature_record_is_named(copy):
    with RecordFile(copy / "features.glf") as rf:
        info = rf.records[3]
    _flip(copy / "features.glf", info.data_offset + 5)
    result = _verify(copy)
    assert result.exit_code == 3, result.output
    assert "features.glf" in result.output and "record 3" in result.output and info.name in result.output


@pytest.mark.parametrize("which", ["segment", "codebook"])
def test_damaged_ivf_file_is_named(copy, which):
    target = _segments(copy)[0] if which == "segment" else copy / "ivf" / "codebook.gls"
    _flip(target, target.stat().st_size - 9)  # inside the array data, past the header
    result = _verify(copy)
    assert result.exit_code == 3, result.output
    assert f"ivf/{target.name}" in result.output and "checksum mismatch" in result.output
    [damage] = verify_index(copy).damage
    assert damage.kind == which


def test_repair_drops_a_damaged_segments_images(copy, demo_benchmark):
    from glocal.search import Searcher

    second = _segments(copy)[1]
    _flip(second, second.stat().st_size - 9)
    result = _verify(copy, "--repair")
    assert result.exit_code == 0, result.output
    dropped = sorted(line.removeprefix("dropped: ") for line in result.output.splitlines()
                     if line.startswith("dropped: "))
    assert dropped == sorted(demo_benchmark.db_names[6:10])
    assert _verify(copy).exit_code == 0
    with Searcher.open(copy) as searcher:
        assert len(searcher.collection) == 6
        hits = searcher.search(demo_benchmark.query_paths[0], top=10)
        assert hits and {h.name for h in hits} <= set(demo_benchmark.db_names[:6])


def test_repair_drops_the_image_of_a_damaged_feature_record(copy):
    with RecordFile(copy / "features.glf") as rf:
        info = rf.records[2]
    _flip(copy / "features.glf", info.data_offset + 5)
    result = _verify(copy, "--repair")
    assert result.exit_code == 0, result.output
    assert f"dropped: {info.name}" in result.output
    report = verify_index(copy)
    assert report.ok
    with RecordFile(copy / "features.glf") as rf:
        assert info.name not in rf and len(rf) == 9


def test_repair_refuses_a_damaged_codebook(copy):
    target = copy / "ivf" / "codebook.gls"
    _flip(target, target.stat().st_size - 9)
    before = sorted(p.name for p in copy.rglob("*"))
    result = _verify(copy, "--repair")
    assert result.exit_code == 3
    assert "cannot repair ivf/codebook.gls" in result.output
    assert sorted(p.name for p in copy.rglob("*")) == before


@pytest.mark.filterwarnings("ignore:.*RANDOM weights")
def test_damaged_global_index_file_is_named(demo_benchmark, tmp_path, torch_one_thread):
    pytest.importorskip("torch")
    from glocal.index.builder import build_index

    out = tmp_path / "dolg.glx"
    build_index(demo_benchmark.db_paths[:4], demo_benchmark.db_names[:4], out, method="dolg",
                settings={"max_side": 96, "scales": [1.0]}, progress=False).collection.close()
    assert _verify(out).exit_code == 0
    target = sorted((out / "global").glob("seg-*.vec.npy"))[0]
    _flip(target, target.stat().st_size - 3)
    result = _verify(out)
    assert result.exit_code == 3, result.output
    assert f"global/{target.name}" in result.output
