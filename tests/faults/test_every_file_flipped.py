"""A byte flipped in each file of an index (ASMK: manifests, features, words, codebook, segments, tombstones;
a global index: its manifest and data files), one file at a time: ``index verify`` names that file and exits 3;
``search`` and ``index compact`` either answer correctly or stop with one error line (exit 3), never a
traceback; a compaction never copies the damage into a fresh checksum: it refuses, or (a file it derives
anew from the verified features: segments, words) its result verifies clean and answers as a clean one."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from glocal.cli.main import app

pytestmark = pytest.mark.faults

ENV = {"GLOCAL_PROGRESS": "0"}
NOT_CHECKSUMMED = {"WRITER.LOCK", "LOCK", "sources.jsonl"}  # locks hold nothing; the source log is a plain log


def _cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _clean(result) -> None:
    assert result.exit_code in (0, 3), result.output
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    if result.exit_code == 3:
        assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1, result.stderr


def _files(index: Path) -> list[str]:
    return sorted(str(p.relative_to(index)) for p in index.rglob("*") if p.is_file() and p.name not in NOT_CHECKSUMMED)


def _check_every_file(base: Path, query: Path, tmp_path: Path) -> dict[str, tuple[int, int]]:
    """For each file: flip a byte in a copy, check verify / search / compact; returns their exit statuses."""
    expected = _cli("search", base, query, "--top", "5")
    assert expected.exit_code == 0, expected.output
    clean = tmp_path / "clean" / "x.glx"  # what a compaction of the undamaged index answers
    shutil.copytree(base, clean, ignore=shutil.ignore_patterns("*LOCK"))
    assert _cli("index", "compact", clean).exit_code == 0
    compacted = _cli("search", clean, query, "--top", "5").stdout.replace(str(clean), "")
    statuses = {}
    for k, name in enumerate(_files(base)):
        index = tmp_path / f"f{k}" / "x.glx"
        shutil.copytree(base, index, ignore=shutil.ignore_patterns("*LOCK"))
        _flip(index / name)
        verify = _cli("index", "verify", index)
        assert verify.exit_code == 3 and name in verify.output, f"{name}: {verify.output}"
        search = _cli("search", index, query, "--top", "5")
        _clean(search)
        if search.exit_code == 0:  # a file this search does not need: the answer is the right one
            assert search.stdout.replace(str(index), "") == expected.stdout.replace(str(base), ""), name
        compact = _cli("index", "compact", index)
        _clean(compact)
        if compact.exit_code == 0:  # only when the damaged file is one compaction derives anew (never copies)
            assert _cli("index", "verify", index).exit_code == 0, name
            assert _cli("search", index, query, "--top", "5").stdout.replace(str(index), "") == compacted, name
        statuses[name] = (search.exit_code, compact.exit_code)
        shutil.rmtree(index.parent)
    return statuses


def test_a_byte_flipped_in_each_file_of_an_asmk_index(demo_benchmark, tmp_path):
    from glocal.index.builder import add_images, build_index

    base = tmp_path / "base.glx"
    paths, names = demo_benchmark.db_paths, demo_benchmark.db_names
    collection = build_index(paths[:5], names[:5], base, settings={"codebook_size": 16}, progress=False,
                             workers=1).collection
    try:
        add_images(collection, paths[5:8], names[5:8], progress=False, workers=1)  # a second segment
        collection.remove([names[1]])  # tombstones, and work for the compaction
    finally:
        collection.close()
    files = _files(base)
    assert {"manifest.json", "features.glf", "words.glf", "ivf/MANIFEST.json"} <= set(files)
    assert sum(f.startswith("ivf/seg-") for f in files) == 2 and any(f.startswith("ivf/tomb-") for f in files)
    statuses = _check_every_file(base, paths[0], tmp_path)
    assert statuses["manifest.json"] == (3, 3)
    assert statuses["features.glf"][1] == 3  # the source of every copy: a damaged record is never copied


def test_a_byte_flipped_in_each_file_of_a_global_index(demo_benchmark, tmp_path, torch_one_thread):
    pytest.importorskip("torch")
    from glocal.index.builder import build_index

    base = tmp_path / "base.glx"
    paths, names = demo_benchmark.db_paths, demo_benchmark.db_names
    collection = build_index(paths[:5], names[:5], base, method="dolg", settings={"max_side": 96, "scales": [1.0]},
                             progress=False, workers=1).collection
    try:
        collection.remove([names[1]])  # tombstones, and work for the compaction
    finally:
        collection.close()
    files = _files(base)
    assert {"manifest.json", "features.glf", "global/MANIFEST.json"} <= set(files) and len(files) >= 5, files
    statuses = _check_every_file(base, paths[0], tmp_path)
    assert statuses["manifest.json"] == (3, 3)
    assert statuses["features.glf"][1] == 3
    assert all(status == (3, 3) for name, status in statuses.items() if name.startswith("global/")), statuses
