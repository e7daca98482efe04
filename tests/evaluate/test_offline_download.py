"""Downloads without network say so (issue 19 item 4): no network / host unreachable, which URL, and where
to put the file by hand so the loader finds it. Checked against a closed local port and a local HTTP server
that answers 404; nothing here touches the network."""
from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from glocal.evaluate.download import Source, download_dataset
from glocal.io.download import DownloadError, UnreachableError, download_file

if TYPE_CHECKING:  # the server fixture lives in tests/conftest.py
    from conftest import FileServer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def closed_url() -> str:
    """A URL on a local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_unreachable_host_names_url_and_place_by_hand_without_retrying(closed_url: str, tmp_path: Path) -> None:
    url = f"{closed_url}/weights.pth"
    t0 = time.perf_counter()
    with pytest.raises(UnreachableError) as caught:
        download_file(url, tmp_path / "w" / "weights.pth", retries=3, retry_wait=5.0, progress=False)
    assert time.perf_counter() - t0 < 5.0  # a refused connection is not retried after a 5 s wait
    message = str(caught.value)
    assert "no network" in message and "cannot be reached" in message and "refused" in message
    assert url in message and f"save it as {tmp_path / 'w' / 'weights.pth'}" in message
    assert ".part" not in message and not (tmp_path / "w" / "weights.pth.part").exists()
    assert caught.value.url == url and isinstance(caught.value, DownloadError)


def test_unresolvable_host_is_unreachable_too(tmp_path: Path) -> None:
    with pytest.raises(UnreachableError, match="no network.*does not resolve"):
        download_file("http://glocal-test.invalid/x.bin", tmp_path / "x.bin", progress=False, retry_wait=0)


def test_http_404_names_url_and_where_to_put_the_file(server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as caught:
        download_file(f"{server.url}/gone.bin", tmp_path / "gone.bin", progress=False,
                      by_hand="put it in the right place")
    message = str(caught.value)
    assert not isinstance(caught.value, UnreachableError)
    assert f"{server.url}/gone.bin: HTTP 404" in message and message.endswith("put it in the right place")


def test_dataset_offline_says_where_the_loader_looks(closed_url: str, tmp_path: Path) -> None:
    table = {"roxford5k": [Source(f"{closed_url}/gnd_roxford5k.pkl", "gnd_roxford5k.pkl"),
                           Source(f"{closed_url}/ox.tgz", "ox.tgz", "flat")]}
    with pytest.raises(UnreachableError) as caught:
        download_dataset("roxford5k", tmp_path, sources=table, progress=False)
    message = str(caught.value)
    folder = tmp_path / "roxford5k"
    assert f"{closed_url}/gnd_roxford5k.pkl" in message
    assert f"save it as {folder / 'gnd_roxford5k.pkl'}" in message and f"--data {folder}" in message
    # the file placed by hand where the message says: the next run goes on to the archive and names it
    (folder / "gnd_roxford5k.pkl").write_bytes(pickle.dumps({"imlist": [], "qimlist": [], "gnd": []}))
    with pytest.raises(UnreachableError) as again:
        download_dataset("roxford5k", tmp_path, sources=table, progress=False)
    assert f"{closed_url}/ox.tgz" in str(again.value) and str(folder / "jpg") in str(again.value)


def test_dataset_404_from_a_mirror(server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"gnd_rparis6k.pkl: HTTP 404.*save it as"):
        download_dataset("rparis6k", tmp_path, base_url=server.url, progress=False)


def _glocal(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GLOCAL_")}
    return subprocess.run([sys.executable, "-m", "glocal", *args], capture_output=True, text=True, timeout=120,
                          env=base | {"PYTHONPATH": str(REPO), "GLOCAL_PROGRESS": "0"} | env)


def test_cli_datasets_download_offline_is_one_line(closed_url: str, tmp_path: Path) -> None:
    res = _glocal("datasets", "download", "roxford5k", str(tmp_path / "data"), env={"GLOCAL_DATASETS_URL": closed_url})
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 3 and len(errors) == 1, res.stderr
    assert "no network" in errors[0] and f"{closed_url}/gnd_roxford5k.pkl" in errors[0]
    assert str(tmp_path / "data" / "roxford5k" / "gnd_roxford5k.pkl") in errors[0]
    assert "Traceback" not in res.stderr


def test_cli_weights_download_offline_is_one_line(closed_url: str, tmp_path: Path) -> None:
    from glocal.weights import published

    name, entry = next(iter(published().items()))
    res = _glocal("weights", "download", name,
                  env={"GLOCAL_WEIGHTS_URL": closed_url, "GLOCAL_CACHE": str(tmp_path / "cache")})
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 3 and len(lines) == 1, res.stderr
    assert "no network" in lines[0] and f"{closed_url}/{entry.weights.filename}" in lines[0]
    assert str(tmp_path / "cache" / "weights" / entry.weights.filename) in lines[0]
