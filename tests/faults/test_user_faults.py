"""Conditions a user (or the disk) causes, met through the command line: each is one named error line and
its exit status, never a traceback or an internal error; images that cannot be used are reported, not
dropped silently; manifests and tombstones are checksummed; commit points fsync their folder."""
from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from glocal.cli.main import app
from glocal.errors import DamagedIndexError

pytestmark = pytest.mark.faults

SETTINGS = {"codebook_size": 16}
ENV = {"GLOCAL_PROGRESS": "0"}


def _cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def _one_error_line(result, status: int, *words: str) -> str:
    assert result.exit_code == status, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for w in words:
        assert w.lower() in errors[0].lower(), errors[0]
    return errors[0]


def _flip(path: Path, offset: int, count: int = 1) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def images(demo_benchmark, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("user-faults") / "images"
    folder.mkdir()
    for p in demo_benchmark.db_paths[:6]:
        shutil.copy(p, folder / p.name)
    return folder


@pytest.fixture(scope="module")
def built(images, tmp_path_factory) -> Path:
    from glocal.index.builder import build_index

    out = tmp_path_factory.mktemp("user-faults-index") / "ok.glx"
    files = sorted(images.iterdir())
    build_index(files, [f.name for f in files], out, settings=SETTINGS, progress=False).collection.close()
    return out


@pytest.fixture
def index(built, tmp_path) -> Path:
    out = tmp_path / "copy.glx"
    shutil.copytree(built, out, ignore=shutil.ignore_patterns("*LOCK"))
    return out


# -- item 4: one line, a named error, for every user-caused condition ---------------------------------
def test_damaged_segment_header_on_info_and_search(index, images):
    segment = sorted((index / "ivf").glob("seg-*.gls"))[0]
    _flip(segment, 0, 16)
    _one_error_line(_cli("index", "info", index), 3, segment.name)
    _one_error_line(_cli("search", index, sorted(images.iterdir())[0]), 3, segment.name)


def test_manifest_not_utf8_or_of_the_wrong_json_type(index):
    (index / "manifest.json").write_bytes(b"\xff\xfe\x00 not utf-8")
    _one_error_line(_cli("index", "info", index), 3, "manifest")
    (index / "manifest.json").write_text("[1, 2, 3]")
    _one_error_line(_cli("index", "info", index), 3, "not a glocal index manifest")
    (index / "manifest.json").write_text('"just a string"')
    _one_error_line(_cli("index", "info", index), 3, "not a glocal index manifest")


def _disk_full(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_during_add_loses_nothing_committed(index, demo_benchmark, tmp_path, monkeypatch):
    from glocal.index.collection import Collection
    from glocal.io.feature_file import RecordFile

    more = tmp_path / "more"
    more.mkdir()
    for p in demo_benchmark.db_paths[6:9]:
        shutil.copy(p, more / p.name)
    with Collection.open(index) as c:
        before = sorted(c.live_names().values())
    monkeypatch.setattr(RecordFile, "append_many", _disk_full)
    line = _one_error_line(_cli("index", "add", index, more), 3, "disk is full", "nothing committed was lost")
    assert str(index) in line
    monkeypatch.undo()
    with Collection.open(index) as c:
        assert sorted(c.live_names().values()) == before
    assert _cli("index", "verify", index).exit_code == 0


def test_disk_full_during_build_leaves_no_folder(images, tmp_path, monkeypatch):
    from glocal.io.feature_file import RecordFile

    monkeypatch.setattr(RecordFile, "append_many", _disk_full)
    out = tmp_path / "new.glx"
    _one_error_line(_cli("index", "build", images, "--out", out, "--set", "codebook_size=16"), 3,
                    "disk is full", "nothing committed was lost")
    assert not out.exists() and not list(tmp_path.glob("new.glx*"))


@pytest.mark.parametrize("code", [errno.EDQUOT, errno.EROFS, errno.EACCES])
def test_other_storage_refusals_are_storage_errors(tmp_path, code):
    from glocal.errors import StorageError
    from glocal.io.atomic import storage_errors

    with pytest.raises(StorageError, match="nothing committed was lost") as info:
        with storage_errors(tmp_path, "writing"):
            raise OSError(code, os.strerror(code))
    assert isinstance(info.value, OSError) and info.value.exit_status == 3
    with pytest.raises(OSError) as other:  # not the storage's doing: unchanged
        with storage_errors(tmp_path, "writing"):
            raise OSError(errno.EIO, "I/O error")
    assert not isinstance(other.value, StorageError)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_ground_truth_pickle_is_refused(tmp_path):
    data = tmp_path / "ds"
    (data / "jpg").mkdir(parents=True)
    marker = tmp_path / "pwned"
    (data / "gnd_roxford5k.pkl").write_bytes(pickle.dumps(_Evil(marker)))
    _one_error_line(_cli("eval", "roxford5k", "--data", data), 3, "refuses to load global")
    _one_error_line(_cli("eval", "roxford5k", "--data", data, "--gnd", data / "gnd_roxford5k.pkl"), 3,
                    "refuses to load global")
    assert not marker.exists()


def test_symlink_loop_and_dangling_link_in_an_image_folder_are_skipped_and_named(images, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(images, folder)
    (folder / "sub").mkdir()
    os.symlink(folder, folder / "sub" / "back-up")  # a loop: sub/back-up/sub/back-up/...
    os.symlink(folder / "gone.jpg", folder / "dangling.jpg")
    os.symlink(folder / "a.jpg", folder / "b.jpg")  # two links that point at each other
    os.symlink(folder / "b.jpg", folder / "a.jpg")
    result = _cli("index", "build", folder, "--out", tmp_path / "x.glx", "--set", "codebook_size=16")
    assert result.exit_code == 0, result.output
    assert "indexed 6 images" in result.stdout
    err = "".join(result.stderr.split())  # rich may wrap a long line anywhere
    assert "back-up:symboliclinkloop" in err
    assert "dangling.jpg:danglingsymboliclink" in err
    assert "a.jpg:symboliclinkloop" in err and "b.jpg:symboliclinkloop" in err


# -- item 8: images with no features are reported --------------------------------------------------
def test_images_with_no_features_are_counted_and_named_with_verbose(images, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(images, folder)
    Image.new("RGB", (200, 150), (128, 128, 128)).save(folder / "blank.png")  # no keypoint anywhere
    result = _cli("index", "build", folder, "--out", tmp_path / "x.glx", "--set", "codebook_size=16", "--verbose")
    assert result.exit_code == 0, result.output
    assert "indexed 7 images" in result.stdout and "1 with no features" in result.stdout
    assert "nofeatures:blank.png" in "".join(result.stderr.split())

    more = tmp_path / "more"
    more.mkdir()
    Image.new("RGB", (120, 120), (10, 200, 30)).save(more / "green.png")
    quiet = _cli("index", "add", tmp_path / "x.glx", more)
    assert quiet.exit_code == 0, quiet.output
    assert "added 1 images (1 with no features)" in quiet.stdout
    assert "green.png" not in quiet.stderr and "--verbosenamesthem" in "".join(quiet.stderr.split())
    Image.new("RGB", (120, 120), (200, 10, 30)).save(more / "red.png")
    verbose = _cli("index", "add", tmp_path / "x.glx", more / "red.png", "-v")
    assert "1 with no features" in verbose.stdout and "nofeatures:red.png" in "".join(verbose.stderr.split())


# -- item 9: checksummed manifest, checked tombstones -----------------------------------------------
def test_manifest_carries_a_checksum_that_catches_a_changed_byte(index):
    from glocal.index.collection import Collection

    mf = index / "manifest.json"
    manifest = json.loads(mf.read_text())
    assert isinstance(manifest["crc32"], int)
    text = mf.read_text()
    mf.write_text(text.replace('"codebook_size": 16', '"codebook_size": 17'))
    assert mf.read_text() != text
    with pytest.raises(DamagedIndexError, match="checksum mismatch"):
        Collection.open(index)
    _one_error_line(_cli("index", "info", index), 3, "checksum mismatch")
    mf.write_text(json.dumps({k: v for k, v in manifest.items() if k != "crc32"}))  # as written before checksums
    with Collection.open(index) as c:
        assert len(c) == 6


def test_damaged_ivf_tombstones_do_not_resurrect_removed_images(index):
    from glocal.index.collection import Collection

    with Collection.open(index, writable=True) as c:
        gone = sorted(c.live_names().values())[:2]
        assert c.remove(gone) == []
    tomb = next((index / "ivf").glob("tomb-*.gls"))
    _flip(tomb, tomb.stat().st_size - 1)  # inside the removed ids, not the header
    with pytest.raises(DamagedIndexError, match="tombstone"):
        Collection.open(index)
    _one_error_line(_cli("search", index, "x.jpg"), 3, "tomb")


def test_damaged_global_tombstones_do_not_resurrect_removed_rows(tmp_path):
    from glocal.index.global_index import GlobalIndex

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((20, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = GlobalIndex(8)
    index.add(vectors, np.arange(20))
    index.remove([3, 4])
    folder = index.save(tmp_path / "global")
    tomb = next(folder.glob("tomb-*.npy"))
    _flip(tomb, tomb.stat().st_size - 1)
    with pytest.raises(DamagedIndexError, match="checksum mismatch"):
        GlobalIndex.open(folder)


# -- item 13: every commit point fsyncs its folder after a rename or a new file ------------------------
@pytest.fixture
def fsynced(monkeypatch) -> list[str]:
    """The paths given to os.fsync, in order (files and folders)."""
    seen: list[str] = []
    real = os.fsync

    def record(fd: int) -> None:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    return seen


def test_build_fsyncs_its_work_folder_and_the_parent_after_the_rename(images, tmp_path, fsynced):
    from glocal.index.builder import build_index

    files = sorted(images.iterdir())
    out = tmp_path / "b.glx"
    build_index(files, [f.name for f in files], out, settings=SETTINGS, progress=False).collection.close()
    work = [p for p in fsynced if ".building-" in p and p.endswith(str(os.getpid()))]
    assert work, fsynced  # the work folder itself, before it is renamed
    last_work = max(i for i, p in enumerate(fsynced) if ".building-" in p)
    assert str(tmp_path) in fsynced[last_work + 1:]  # the parent, after the rename


def test_compaction_fsyncs_the_new_folder_and_the_parent_after_the_swap(index, fsynced):
    from glocal.index.collection import Collection
    from glocal.index.compact import compact_index

    with Collection.open(index, writable=True) as c:
        c.remove(sorted(c.live_names().values())[:1])
    fsynced.clear()
    compact_index(index)
    fresh = [i for i, p in enumerate(fsynced) if p.endswith(".compacting")]
    assert fresh, fsynced
    assert str(index.parent) in fsynced[max(fresh) + 1:]


def test_new_sources_and_feature_files_fsync_their_folder(tmp_path, fsynced):
    from glocal.io.feature_file import RecordFile
    from glocal.io.sources import SourceLog

    RecordFile(tmp_path / "f.glf", writable=True).close()
    assert fsynced[-2:] == [str(tmp_path / "f.glf"), str(tmp_path)]
    log = SourceLog(tmp_path)
    log.append([("a.jpg", tmp_path / "a.jpg")])
    assert fsynced[-2:] == [str(tmp_path / "sources.jsonl"), str(tmp_path)]
    log.append([("b.jpg", tmp_path / "b.jpg")])  # an append to an existing file: the file only
    assert fsynced[-1] == str(tmp_path / "sources.jsonl")


@pytest.mark.faults
def test_every_first_stage_manifest_carries_its_own_checksum(tmp_path: Path, demo_benchmark) -> None:
    """Item 9: a changed byte in ``ivf/MANIFEST.json`` (here: one more image claimed) is refused, not believed."""
    import json

    from glocal.errors import DamagedIndexError
    from glocal.index.builder import build_index
    from glocal.index.collection import Collection

    index = tmp_path / "m.glx"
    build_index(demo_benchmark.db_paths[:4], demo_benchmark.db_names[:4], index, settings={"codebook_size": 16},
                progress=False).collection.close()
    path = index / "ivf" / "MANIFEST.json"
    manifest = json.loads(path.read_text())
    assert "manifest_crc32" in manifest
    text = path.read_text()
    changed = text.replace('"images": 4', '"images": 5')
    assert changed != text
    path.write_text(changed)
    with pytest.raises(DamagedIndexError, match="checksum mismatch"):
        Collection.open(index)
