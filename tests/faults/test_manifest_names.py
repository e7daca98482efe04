"""File names read from an index's manifests are plain names in the folder: a crafted ``../victim.gls`` is
refused on open, and nothing outside the index is read, kept or deleted on its word."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from glocal.errors import DamagedIndexError
from glocal.index.builder import build_index
from glocal.index.collection import Collection
from glocal.index.global_files import write_file
from glocal.index.global_index import GlobalIndex
from glocal.io.atomic import with_self_checksum

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def template(demo_benchmark, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("names") / "t.glx"
    paths, names = demo_benchmark.db_paths[:3], demo_benchmark.db_names[:3]
    build_index(paths, names, out, settings={"codebook_size": 16}, progress=False).collection.close()
    return out


@pytest.mark.parametrize("bad", ["../victim.gls", "/tmp/victim.gls", "sub/seg-00000001.gls", "..", "seg-1.gls"])
def test_crafted_segment_name_is_refused(template: Path, tmp_path: Path, bad: str) -> None:
    index = tmp_path / "i.glx"
    shutil.copytree(template, index)
    victim = tmp_path / "victim.gls"  # another index's file, beside this one
    victim.write_bytes(b"not yours")
    manifest_path = index / "ivf" / "MANIFEST.json"
    m = json.loads(manifest_path.read_text())
    m["segments"][0]["file"] = bad
    manifest_path.write_text(json.dumps(with_self_checksum(m)))  # a re-signed, crafted manifest
    for writable in (False, True):
        with pytest.raises(DamagedIndexError) as err:
            Collection.open(index, writable=writable)
        assert str(manifest_path) in str(err.value) and repr(bad) in str(err.value)
    assert victim.read_bytes() == b"not yours"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.glx", "victim.gls"]


@pytest.mark.parametrize("field", ["tombstones", "codebook"])
def test_crafted_tombstone_or_codebook_name_is_refused(template: Path, tmp_path: Path, field: str) -> None:
    index = tmp_path / "i.glx"
    shutil.copytree(template, index)
    manifest_path = index / "ivf" / "MANIFEST.json"
    m = json.loads(manifest_path.read_text())
    m[field] = {**(m.get(field) or {"bytes": 0, "crc32": 0, "count": 0}), "file": "../victim.gls"}
    manifest_path.write_text(json.dumps(with_self_checksum(m)))  # a re-signed, crafted manifest
    with pytest.raises(DamagedIndexError, match=r"'\.\./victim\.gls'"):
        Collection.open(index)


@pytest.mark.parametrize("where", ["files", "segment", "tombstones"])
def test_crafted_global_index_names_are_refused(tmp_path: Path, where: str) -> None:
    folder = tmp_path / "g"
    gi = GlobalIndex(4, "exact")
    gi.add(np.eye(4, dtype=np.float32), np.arange(4))
    gi.save(folder)
    victim = tmp_path / "victim.npy"
    victim.write_bytes(b"not yours")
    manifest_path = folder / "MANIFEST.json"
    m = json.loads(manifest_path.read_text())
    if where == "files":
        m["files"]["../victim.npy"] = write_file(folder / "x.npy", np.zeros(1))
    elif where == "segment":
        m["segments"][0]["ids"] = "../victim.npy"
    else:
        m["tombstones"] = "../victim.npy"
    manifest_path.write_text(json.dumps(with_self_checksum(m)))  # a re-signed, crafted manifest
    with pytest.raises(DamagedIndexError, match=r"'\.\./victim\.npy'"):
        GlobalIndex.open(folder)
    assert victim.read_bytes() == b"not yours"
