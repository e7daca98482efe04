"""The HTTP service against a real small sift index, through FastAPI's TestClient; and ``glocal serve``."""
from __future__ import annotations

import shutil
import struct
import sys
import zlib
from importlib.util import find_spec
from pathlib import Path
from urllib.parse import quote

import pytest
from typer.testing import CliRunner

from glocal.cli.main import app as cli_app

runner = CliRunner()
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def index_path(demo_benchmark, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from glocal.index.builder import build_index

    out = tmp_path_factory.mktemp("serve") / "x.glx"
    build_index(demo_benchmark.db_paths[:20], demo_benchmark.db_names[:20], out, progress=False,
                settings={"codebook_size": 256}).collection.close()
    return out


def _client(index: Path, **kwargs):
    pytest.importorskip("fastapi")
    if find_spec("httpx2") is None:  # starlette's TestClient takes httpx2 where installed, else httpx
        pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from glocal.serve.app import create_app

    return TestClient(create_app(index, **kwargs))


@pytest.fixture(scope="module")
def client(index_path: Path):
    with _client(index_path) as c:  # the context runs the lifespan: searcher opened, then closed
        yield c


def _upload(path: Path, name: str | None = None) -> dict:
    return {"image": (name or path.name, path.read_bytes(), "image/jpeg")}


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels (header only): a decompression bomb's calling card."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_health_and_info(client) -> None:
    assert client.get("/health").json() == {"status": "ok", "images": 20}
    info = client.get("/info").json()
    assert info["method"] == "sift" and info["images"] == 20
    assert info["first_stage"]["kind"] == "asmk*" and info["first_stage"]["codebook_size"] == 256
    assert info["index"]["codebook_size"] == 256 and info["rerank"]["rerank_top"] == 100
    assert info["service"]["writable"] is False


def test_search_with_a_database_image_finds_it_first(client, demo_benchmark) -> None:
    path, name = demo_benchmark.db_paths[3], demo_benchmark.db_names[3]
    res = client.post("/search", files=_upload(path), params={"top": 5})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["ms"] > 0 and len(body["results"]) == 5
    first = body["results"][0]
    assert first["name"] == name and first["index"] == 3 and first["inliers"] >= 15
    assert first["verified"] is True  # the yes/no decision travels in the service's JSON
    assert "matches" not in first


def test_bbox_and_matches_as_form_fields_or_query(client, demo_benchmark) -> None:
    from PIL import Image

    path, name = demo_benchmark.db_paths[5], demo_benchmark.db_names[5]
    w, h = Image.open(path).size
    bbox = f"{w * 0.1:.1f},{h * 0.1:.1f},{w * 0.9:.1f},{h * 0.9:.1f}"
    res = client.post("/search", files=_upload(path), data={"bbox": bbox, "matches": "true", "top": "3"})
    assert res.status_code == 200, res.text
    first = res.json()["results"][0]
    assert first["name"] == name and len(res.json()["results"]) == 3
    assert len(first["matches"]) == first["inliers"] > 0 and all(len(m) == 4 for m in first["matches"])
    # query matches lie inside the box (coordinates in the original image)
    assert all(w * 0.1 - 1 <= m[0] <= w * 0.9 + 1 and h * 0.1 - 1 <= m[1] <= h * 0.9 + 1 for m in first["matches"])
    # the same options as query parameters; a form field wins over a query parameter
    res = client.post("/search", files=_upload(path), params={"bbox": bbox, "matches": "1", "top": 7},
                      data={"top": "2"})
    assert res.status_code == 200 and len(res.json()["results"]) == 2 and "matches" in res.json()["results"][0]


@pytest.mark.parametrize("bbox", ["1,2,3", "10,10,5,20", "a,b,c,d", "nan,0,10,10"])
def test_bad_bbox_is_refused(client, demo_benchmark, bbox: str) -> None:
    res = client.post("/search", files=_upload(demo_benchmark.db_paths[0]), params={"bbox": bbox})
    assert res.status_code == 422 and "bbox" in res.json()["detail"]


def test_bad_uploads_are_refused_with_the_reason(client, demo_benchmark) -> None:
    res = client.post("/search", files={"image": ("notes.txt", b"this is not an image", "text/plain")})
    assert res.status_code == 400
    assert "notes.txt" in res.json()["detail"] and "not an image" in res.json()["detail"]
    res = client.post("/search", files={"image": ("empty.jpg", b"", "image/jpeg")})
    assert res.status_code == 400 and "empty" in res.json()["detail"]
    res = client.post("/search", files={"image": ("bomb.png", _png_header_only(30000, 30000), "image/png")})
    assert res.status_code == 413 and "decompression bomb" in res.json()["detail"]
    res = client.post("/search", files=_upload(demo_benchmark.db_paths[0]), params={"bbox": "50000,50000,60000,60000"})
    assert res.status_code == 400 and "empty" in res.json()["detail"]
    assert client.post("/search").status_code == 422  # no image at all


def test_options_the_method_does_not_have_give_400(client, demo_benchmark) -> None:
    res = client.post("/search", files=_upload(demo_benchmark.db_paths[0]), params={"qe": 2})
    assert res.status_code == 400 and "query expansion" in res.json()["detail"]
    res = client.post("/search", files=_upload(demo_benchmark.db_paths[0]), params={"top": 0})
    assert res.status_code == 422


def test_read_only_service_refuses_edits(client, demo_benchmark) -> None:
    res = client.post("/images", files=_upload(demo_benchmark.db_paths[30]), data={"name": "new"})
    assert res.status_code == 403 and "--writable" in res.json()["detail"]
    res = client.delete(f"/images/{demo_benchmark.db_names[0]}")
    assert res.status_code == 403
    assert client.get("/health").json()["images"] == 20


def test_upload_limit(index_path: Path, demo_benchmark) -> None:
    data = demo_benchmark.db_paths[0].read_bytes()
    with _client(index_path, max_upload_mb=len(data) / 2 / 2**20) as c:
        res = c.post("/search", files=_upload(demo_benchmark.db_paths[0]))
        assert res.status_code == 413 and "limit" in res.json()["detail"]
    with _client(index_path, max_upload_mb=len(data) / 2**20 * 1.5) as c:
        assert c.post("/search", files=_upload(demo_benchmark.db_paths[0])).status_code == 200


def test_writable_service_adds_and_removes(index_path: Path, demo_benchmark, tmp_path: Path) -> None:
    copy = tmp_path / "w.glx"
    shutil.copytree(index_path, copy)
    new_path, name = demo_benchmark.db_paths[40], "added/photo 1.jpg"
    with _client(copy, writable=True, token=TOKEN) as c:
        c.headers["Authorization"] = f"Bearer {TOKEN}"
        assert c.get("/info").json()["service"]["writable"] is True
        res = c.post("/images", files=_upload(new_path), data={"name": name})
        assert res.status_code == 201, res.text
        assert res.json() == {"name": name, "index": 20, "images": 21}
        assert c.get("/health").json()["images"] == 21
        first = c.post("/search", files=_upload(new_path)).json()["results"][0]
        assert first["name"] == name and first["index"] == 20
        res = c.post("/images", files=_upload(new_path), data={"name": name})
        assert res.status_code == 409 and name in res.json()["detail"]
        res = c.post("/images", files={"image": ("x.jpg", b"\xff\xd8\xff garbage", "image/jpeg")}, data={"name": "bad"})
        assert res.status_code == 400 and "x.jpg" in res.json()["detail"]
        assert c.post("/images", files=_upload(new_path), data={"name": "  "}).status_code == 422

        res = c.delete(f"/images/{quote(name)}")
        assert res.status_code == 200 and res.json() == {"removed": name, "images": 20}
        names = [h["name"] for h in c.post("/search", files=_upload(new_path), params={"top": 50}).json()["results"]]
        assert name not in names and len(names) == 20
        assert c.delete(f"/images/{quote(name)}").status_code == 404
    # the edits were committed to the index folder
    from glocal.index.collection import Collection

    with Collection.open(copy) as collection:
        assert len(collection) == 20 and name not in collection.live_names().values()


# -- glocal serve ------------------------------------------------------------------------------------

def test_serve_help() -> None:
    res = runner.invoke(cli_app, ["serve", "--help"])
    assert res.exit_code == 0, res.output
    for option in ("--host", "--port", "--writable", "--max-upload-mb", "--max-pixels", "--max-queue",
                   "--lock-timeout", "--request-timeout", "--token", "--insecure-no-token"):
        assert option in res.output


def test_serve_without_the_extras_says_what_to_install(monkeypatch, index_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # makes "import uvicorn" fail as on a lean install
    res = runner.invoke(cli_app, ["serve", str(index_path)])
    assert res.exit_code == 4  # MissingDependencyError
    assert "needs the service extras: pip install 'glocal[serve]'" in " ".join(res.output.split())


def test_serve_starts_uvicorn_on_the_index(monkeypatch, index_path: Path, tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    res = runner.invoke(cli_app, ["serve", str(index_path), "--port", "9123", "--host", "0.0.0.0"],
                        env={"GLOCAL_PROGRESS": "0"})
    assert res.exit_code == 0, res.output
    (served, kw), = calls
    assert kw["host"] == "0.0.0.0" and kw["port"] == 9123
    assert served.state.service.writable is False and served.state.service.index_path == index_path
    res = runner.invoke(cli_app, ["serve", str(tmp_path / "missing.glx")], env={"GLOCAL_PROGRESS": "0"})
    assert res.exit_code == 3 and "no such index folder" in " ".join(res.output.split())  # rich wraps lines


def test_serve_writable_needs_a_token_or_loopback_insecure(monkeypatch, index_path: Path) -> None:
    pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    env = {"GLOCAL_PROGRESS": "0", "GLOCAL_TOKEN": ""}
    res = runner.invoke(cli_app, ["serve", str(index_path), "--writable"], env=env)
    assert res.exit_code == 2 and "--token" in " ".join(res.output.split()) and not calls
    res = runner.invoke(cli_app, ["serve", str(index_path), "--writable", "--insecure-no-token", "--host", "0.0.0.0"],
                        env=env)
    assert res.exit_code == 2 and "loopback" in " ".join(res.output.split()) and not calls
    res = runner.invoke(cli_app, ["serve", str(index_path), "--writable", "--insecure-no-token"], env=env)
    assert res.exit_code == 0, res.output
    assert calls[-1][0].state.service.writable is True and calls[-1][0].state.service.token is None
    res = runner.invoke(cli_app, ["serve", str(index_path), "--writable", "--host", "0.0.0.0", "--max-queue", "3",
                                  "--lock-timeout", "2.5", "--max-pixels", "1000", "--request-timeout", "7"],
                        env=env | {"GLOCAL_TOKEN": "from-env"})
    assert res.exit_code == 0, res.output
    svc = calls[-1][0].state.service
    assert svc.token == b"from-env" and svc.max_queue == 3 and svc.lock_timeout == 2.5 and svc.max_pixels == 1000
    assert svc.request_timeout == 7


def test_cli_defaults_match_the_app() -> None:
    pytest.importorskip("fastapi")
    from glocal.cli import serve_cmd
    from glocal.serve import app

    assert (serve_cmd.DEFAULT_MAX_PIXELS, serve_cmd.DEFAULT_MAX_QUEUE, serve_cmd.DEFAULT_LOCK_TIMEOUT,
            serve_cmd.DEFAULT_REQUEST_TIMEOUT) == (app.DEFAULT_MAX_PIXELS, app.DEFAULT_MAX_QUEUE,
                                                   app.DEFAULT_LOCK_TIMEOUT, app.DEFAULT_REQUEST_TIMEOUT)
