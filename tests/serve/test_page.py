"""The service's web page through FastAPI's TestClient: the page and its files, thumbnails addressed by
position (never by a path), their errors, and the header's facts. The page in a real browser:
``test_browser.py``."""
from __future__ import annotations

import io
import shutil
import tomllib
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

TOKEN = "page-token"
N = 12


@pytest.fixture(scope="module")
def copies(demo_benchmark, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], list[str]]:
    """A small index over copies of the demo images (so a test may delete a source file)."""
    from glocal.index.builder import build_index

    root = tmp_path_factory.mktemp("page")
    (root / "img").mkdir()
    paths = [Path(shutil.copy(p, root / "img" / p.name)) for p in demo_benchmark.db_paths[:N]]
    names = demo_benchmark.db_names[:N]
    build_index(paths, names, root / "x.glx", progress=False, settings={"codebook_size": 256}).collection.close()
    return root / "x.glx", paths, names


def _client(index: Path, **kwargs):
    pytest.importorskip("fastapi")
    if find_spec("httpx2") is None:
        pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from glocal.serve.app import create_app

    return TestClient(create_app(index, **kwargs))


@pytest.fixture(scope="module")
def client(copies):
    with _client(copies[0]) as c:
        yield c


def _jpeg(body: bytes):
    from PIL import Image

    img = Image.open(io.BytesIO(body))
    assert img.format == "JPEG"
    return img.convert("RGB")


def test_the_page_and_its_files_are_served(client) -> None:
    res = client.get("/")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/html")
    html = res.text
    assert '<script src="/static/app.js"' in html and 'href="/static/style.css"' in html
    assert "http://" not in html and "https://" not in html  # nothing from elsewhere: works offline
    assert "default-src 'self'" in res.headers["content-security-policy"]
    scripts = [client.get(f"/static/{name}") for name in ("match.js", "app.js")]
    assert all(r.status_code == 200 and r.headers["content-type"].startswith("text/javascript") for r in scripts)
    assert all(f'<script src="/static/{name}" defer>' in html for name in ("match.js", "app.js"))
    js = "\n".join(r.text for r in scripts)
    assert "/search" in js and "/thumbnails/" in js and "upload.onprogress" in js
    assert "http://" not in js and "https://" not in js
    css = client.get("/static/style.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert "@import" not in css.text and "url(" not in css.text


@pytest.mark.parametrize("path", ["/static/app.py", "/static/..%2Fapp.py", "/static/%2e%2e%2f%2e%2e%2fpyproject.toml",
                                  "/static/../app.py", "/static/", "/static/limits.py"])
def test_static_answers_only_its_own_files(client, path: str) -> None:
    res = client.get(path)
    assert res.status_code == 404
    assert "create_app" not in res.text and "[project]" not in res.text


def test_the_files_ship_with_the_package() -> None:
    """Read through importlib.resources (what an installed wheel offers) and declared as package data."""
    from glocal.serve.page import STATIC, static_file

    for name in STATIC:
        assert len(static_file(name)) > 500, name
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert "static/*" in pyproject["tool"]["setuptools"]["package-data"]["glocal.serve"]


def test_thumbnail_by_position_is_the_indexed_image(client, copies) -> None:
    from PIL import Image

    _, paths, names = copies
    for i in (1, 4, 8):
        original = Image.open(paths[i]).convert("RGB")
        res = client.get(f"/thumbnails/{i}")
        assert res.status_code == 200 and res.headers["content-type"] == "image/jpeg"
        thumb = _jpeg(res.content)
        w, h = original.size
        assert max(thumb.size) == min(256, max(w, h))
        assert abs(thumb.size[0] / thumb.size[1] - w / h) < 0.02
        assert (res.headers["x-image-width"], res.headers["x-image-height"]) == (str(w), str(h))
        # the same picture: close to the original shrunk the same way, far from another indexed image
        same = np.asarray(original.resize(thumb.size), np.float32)
        other = np.asarray(Image.open(paths[i + 1]).convert("RGB").resize(thumb.size), np.float32)
        got = np.asarray(thumb, np.float32)
        assert np.abs(got - same).mean() < 8 < np.abs(got - other).mean()
        info = client.get(f"/thumbnails/{i}/info").json()
        assert info == {"index": i, "name": names[i], "width": w, "height": h}
    large = client.get("/thumbnails/8", params={"size": "large"})
    assert large.status_code == 200 and _jpeg(large.content).size == Image.open(paths[8]).size  # never upsampled


def test_thumbnails_are_revalidated_by_etag(client) -> None:
    first = client.get("/thumbnails/2")
    tag = first.headers["etag"]
    assert first.headers["cache-control"] == "no-cache"
    again = client.get("/thumbnails/2", headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.content == b""
    assert client.get("/thumbnails/2", params={"size": "large"}).headers["etag"] != tag
    assert client.get("/thumbnails/3").headers["etag"] != tag


@pytest.mark.parametrize("path", ["/thumbnails/12", "/thumbnails/-1", "/thumbnails/99999", "/thumbnails/12/info"])
def test_unknown_positions_give_404_naming_the_range(client, path: str) -> None:
    res = client.get(path)
    assert res.status_code == 404 and res.headers["content-type"] == "application/json"
    assert "no image number" in res.json()["detail"] and f"0 to {N - 1}" in res.json()["detail"]


@pytest.mark.parametrize("path", ["/thumbnails/..%2F..%2Fetc%2Fpasswd", "/thumbnails/%2Fetc%2Fpasswd",
                                  "/thumbnails/..%2F..%2Fx.glx%2Fmanifest.json", "/thumbnails/x.jpg",
                                  "/thumbnails/1?size=..%2F..%2Fetc%2Fpasswd", "/thumbnails/1?size=4096",
                                  "/thumbnails/1.5", "/thumbnails/0x1"])
def test_a_path_is_never_opened(client, path: str) -> None:
    """Only an integer position is accepted (422 or no such route); nothing is read from the path given."""
    res = client.get(path)
    assert res.status_code in (404, 422), res.text
    assert res.headers["content-type"] == "application/json" and res.json()["detail"]
    assert "root:" not in res.text and "crc32" not in res.text and len(res.content) < 2000


def test_a_missing_source_file_or_a_removed_image_gives_a_readable_404(copies, tmp_path: Path) -> None:
    from glocal.index.collection import Collection

    index, paths, names = copies
    work = tmp_path / "x.glx"
    shutil.copytree(index, work)
    with Collection.open(work, writable=True) as collection:
        assert collection.remove([names[5]]) == []
    moved = paths[6].rename(paths[6].with_suffix(".moved"))
    try:
        with _client(work) as client:
            res = client.get("/thumbnails/6")
            assert res.status_code == 404
            assert res.json()["detail"] == f"the image file of {names[6]!r} is no longer where it was indexed"
            assert str(paths[6].parent) not in res.text  # the server's folders are not told
            res = client.get("/thumbnails/5")
            assert res.status_code == 404 and "was removed from the index" in res.json()["detail"]
            assert client.get("/thumbnails/7").status_code == 200
    finally:
        moved.rename(paths[6])


def test_an_image_added_through_the_service_is_served_from_uploads(copies, tmp_path: Path) -> None:
    """Its upload (kept in <index>/uploads) is its source; EXIF orientation is applied as when indexing."""
    from PIL import Image

    index, paths, _ = copies
    work = tmp_path / "x.glx"
    shutil.copytree(index, work)
    photo = Image.open(paths[8]).convert("RGB")
    w, h = photo.size
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown rotated by 90 degrees
    buf = io.BytesIO()
    photo.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=92, exif=exif)
    with _client(work, writable=True, token=TOKEN) as client:
        res = client.post("/images", files={"image": ("turned.jpg", buf.getvalue(), "image/jpeg")},
                          data={"name": "turned"}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert res.status_code == 201, res.text
        i = res.json()["index"]
        assert list((work / "uploads").iterdir())
        info = client.get(f"/thumbnails/{i}/info").json()
        assert (info["name"], info["width"], info["height"]) == ("turned", w, h)
        thumb = _jpeg(client.get(f"/thumbnails/{i}").content)
        assert max(thumb.size) == 256 and abs(thumb.size[0] / thumb.size[1] - w / h) < 0.02
        assert np.abs(np.asarray(thumb, np.float32) - np.asarray(photo.resize(thumb.size), np.float32)).mean() < 8
        facts = client.get("/page/facts").json()
        assert facts["images"] == N + 1 and facts["writable"] is True and facts["token"] is True


def test_facts_for_the_header(client, copies) -> None:
    facts = client.get("/page/facts").json()
    on_disk = sum(p.stat().st_size for p in copies[0].rglob("*") if p.is_file())
    assert facts == {"images": N, "method": client.get("/info").json()["method"], "bytes": on_disk,
                     "writable": False, "token": False, "max_upload_mb": 20}


def test_search_answers_what_the_page_draws(client, copies) -> None:
    """The page asks /search for matches and scales them with /thumbnails/{i}/info: both in original pixels."""
    _, paths, names = copies
    res = client.post("/search", files={"image": ("q.jpg", paths[4].read_bytes(), "image/jpeg")},
                      data={"top": "5", "matches": "true"})
    first = res.json()["results"][0]
    info = client.get(f"/thumbnails/{first['index']}/info").json()
    assert first["name"] == names[4] == info["name"]
    m = np.asarray(first["matches"])
    assert len(m) == first["inliers"] > 0
    assert (m[:, 2] <= info["width"]).all() and (m[:, 3] <= info["height"]).all() and (m >= 0).all()
