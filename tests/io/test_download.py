"""Downloads against a local HTTP server on 127.0.0.1 (with Range support and injected failures)."""
from __future__ import annotations

import hashlib
import io
import json
import pickle
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # the server fixture lives in tests/conftest.py
    from conftest import FileServer

from glocal.evaluate.download import DownloadError, Source, download_dataset, download_file, safe_extract

PAYLOAD = bytes(range(256)) * 1000  # 256 kB


def test_plain_download_returns_sha256(server: FileServer, tmp_path: Path) -> None:
    server.files["/data.bin"] = PAYLOAD
    digest = download_file(f"{server.url}/data.bin", tmp_path / "data.bin", progress=False)
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD
    assert digest == hashlib.sha256(PAYLOAD).hexdigest()
    assert not (tmp_path / "data.bin.part").exists()


def test_interrupted_transfer_resumes_with_range(server: FileServer, tmp_path: Path) -> None:
    server.files["/data.bin"] = PAYLOAD
    server.cut["/data.bin"] = 100_000
    download_file(f"{server.url}/data.bin", tmp_path / "data.bin", progress=False, retry_wait=0)
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD
    assert server.ranges == [None, "bytes=100000-"]


def test_resume_in_a_later_call(server: FileServer, tmp_path: Path) -> None:
    server.files["/data.bin"] = PAYLOAD
    server.cut["/data.bin"] = 70_000
    with pytest.raises(DownloadError, match="bytes received stay in"):
        download_file(f"{server.url}/data.bin", tmp_path / "data.bin", retries=0, progress=False)
    part = tmp_path / "data.bin.part"
    assert part.stat().st_size == 70_000 and not (tmp_path / "data.bin").exists()
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    download_file(f"{server.url}/data.bin", tmp_path / "data.bin", sha256=sha, size=len(PAYLOAD), progress=False)
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD
    assert server.ranges[-1] == "bytes=70000-"


def test_complete_part_file_gets_416_and_finishes(server: FileServer, tmp_path: Path) -> None:
    server.files["/data.bin"] = PAYLOAD
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD)
    download_file(f"{server.url}/data.bin", tmp_path / "data.bin", size=len(PAYLOAD), progress=False)
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts(server: FileServer, tmp_path: Path) -> None:
    server.files["/data.bin"] = PAYLOAD
    server.ignore_range = True
    (tmp_path / "data.bin.part").write_bytes(b"garbage that is not the start")
    download_file(f"{server.url}/data.bin", tmp_path / "data.bin", progress=False)
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_checksum_mismatch_deletes_download(server: FileServer, tmp_path: Path) -> None:
    server.files["/data.bin"] = PAYLOAD
    with pytest.raises(DownloadError, match="does not match the expected"):
        download_file(f"{server.url}/data.bin", tmp_path / "data.bin", sha256="0" * 64, progress=False)
    assert not (tmp_path / "data.bin").exists() and not (tmp_path / "data.bin.part").exists()


def test_http_error_names_url(server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="missing.bin: HTTP 404"):
        download_file(f"{server.url}/missing.bin", tmp_path / "x", progress=False)


def make_tar(members: dict[str, bytes], symlink: tuple[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if symlink is not None:
            info = tarfile.TarInfo(symlink[0])
            info.type = tarfile.SYMTYPE
            info.linkname = symlink[1]
            tar.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize("bad", ["../evil.txt", "/abs/evil.txt", "ok/../../evil.txt"])
def test_safe_extract_refuses_traversal(tmp_path: Path, bad: str) -> None:
    archive = tmp_path / "a.tgz"
    archive.write_bytes(make_tar({"fine.txt": b"x", bad: b"evil"}))
    with pytest.raises(DownloadError, match="outside"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "out" / "fine.txt").exists()  # nothing written before the check


def test_safe_extract_refuses_links(tmp_path: Path) -> None:
    archive = tmp_path / "a.tgz"
    archive.write_bytes(make_tar({"fine.txt": b"x"}, symlink=("link", "/etc/passwd")))
    with pytest.raises(DownloadError, match="link member"):
        safe_extract(archive, tmp_path / "out")


def test_safe_extract_plain(tmp_path: Path) -> None:
    archive = tmp_path / "a.tgz"
    archive.write_bytes(make_tar({"./d/x.jpg": b"1", "y.jpg": b"2"}))
    files = safe_extract(archive, tmp_path / "out")
    assert sorted(p.name for p in files) == ["x.jpg", "y.jpg"]
    assert (tmp_path / "out" / "d" / "x.jpg").read_bytes() == b"1"


def test_download_dataset_layout_and_rerun(server: FileServer, tmp_path: Path) -> None:
    gnd = pickle.dumps({"imlist": ["paris_a_1"], "qimlist": [], "gnd": []})
    server.files["/gnd_rparis6k.pkl"] = gnd
    server.files["/p1.tgz"] = make_tar({"paris/a/paris_a_1.jpg": b"jpeg1", "paris/b/paris_b_1.jpg": b"jpeg2"})
    server.files["/p2.tgz"] = make_tar({"paris/c/paris_c_1.jpg": b"jpeg3"})
    table = {"rparis6k": [
        Source(f"{server.url}/gnd_rparis6k.pkl", "gnd_rparis6k.pkl"),
        Source(f"{server.url}/p1.tgz", "p1.tgz", "flat"),
        Source(f"{server.url}/p2.tgz", "p2.tgz", "flat", sha256=hashlib.sha256(server.files["/p2.tgz"]).hexdigest()),
    ]}
    folder = download_dataset("rparis6k", tmp_path, sources=table, progress=False)
    assert folder == tmp_path / "rparis6k"
    assert sorted(p.name for p in (folder / "jpg").iterdir()) == ["paris_a_1.jpg", "paris_b_1.jpg", "paris_c_1.jpg"]
    assert (folder / "gnd_rparis6k.pkl").read_bytes() == gnd
    assert not (folder / "p1.tgz").exists()
    manifest = json.loads((folder / "checksums.json").read_text())
    assert manifest["p1.tgz"]["sha256"] == hashlib.sha256(server.files["/p1.tgz"]).hexdigest()
    assert manifest["p2.tgz"]["verified"] is True and manifest["p1.tgz"]["extracted"] == 2
    n_requests = len(server.ranges)
    download_dataset("rparis6k", tmp_path, sources=table, progress=False)
    assert len(server.ranges) == n_requests  # nothing fetched again


def test_download_dataset_base_url(server: FileServer, tmp_path: Path) -> None:
    server.files["/mirror/gnd_roxford5k.pkl"] = b"pickle bytes"
    server.files["/mirror/ox.tgz"] = make_tar({"oxford_1.jpg": b"j"})
    table = {"roxford5k": [Source("http://unreachable.invalid/gnd_roxford5k.pkl", "gnd_roxford5k.pkl"),
                           Source("http://unreachable.invalid/ox.tgz", "ox.tgz", "flat")]}
    folder = download_dataset("roxford5k", tmp_path, base_url=f"{server.url}/mirror/", sources=table, progress=False)
    assert (folder / "jpg" / "oxford_1.jpg").read_bytes() == b"j"


def test_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="unknown dataset"):
        download_dataset("holidays", tmp_path, progress=False)


def test_official_table_shape() -> None:
    from glocal.evaluate.download import SOURCES

    assert set(SOURCES) == {"roxford5k", "rparis6k", "r1m"}
    assert SOURCES["roxford5k"][0].url.endswith("/roxford5k/gnd_roxford5k.pkl")
    assert len(SOURCES["r1m"]) == 101


def test_download_command_with_mirror(server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from glocal.cli.datasets_cmd import download_command

    monkeypatch.setenv("GLOCAL_PROGRESS", "0")
    server.files["/gnd_roxford5k.pkl"] = pickle.dumps({"imlist": [], "qimlist": [], "gnd": []})
    server.files["/oxbuild_images-v1.tgz"] = make_tar({"all_souls_000000.jpg": b"jpeg"})
    download_command("roxford5k", tmp_path, base_url=server.url)
    assert (tmp_path / "roxford5k" / "jpg" / "all_souls_000000.jpg").read_bytes() == b"jpeg"
    assert all(r is None for r in server.ranges)


def test_readme_download_command_takes_a_positional_destination(server: FileServer, tmp_path: Path) -> None:
    """``glocal datasets download roxford5k data/`` as the README prints it (here against a local mirror)."""
    from typer.testing import CliRunner

    from glocal.cli.main import app

    server.files["/gnd_roxford5k.pkl"] = pickle.dumps({"imlist": [], "qimlist": [], "gnd": []})
    server.files["/oxbuild_images-v1.tgz"] = make_tar({"all_souls_000000.jpg": b"jpeg"})
    res = CliRunner().invoke(app, ["datasets", "download", "roxford5k", str(tmp_path / "data"), "--base-url",
                                   server.url], env={"GLOCAL_PROGRESS": "0"})
    assert res.exit_code == 0, res.output
    assert (tmp_path / "data" / "roxford5k" / "jpg" / "all_souls_000000.jpg").read_bytes() == b"jpeg"
    both = CliRunner().invoke(app, ["datasets", "download", "roxford5k", str(tmp_path / "a"), "--dest",
                                    str(tmp_path / "b")])
    assert both.exit_code == 2 and "two destinations" in both.output
