"""The service under hostile clients: body and pixel limits, backpressure, lock timeout, quick /health,
tokens for writes."""
from __future__ import annotations

import io
import shutil
import threading
import time
from importlib.util import find_spec
from pathlib import Path

import pytest

TOKEN = "another-s3cret"


@pytest.fixture(scope="module")
def index_path(demo_benchmark, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from glocal.index.builder import build_index

    out = tmp_path_factory.mktemp("serve-limits") / "x.glx"
    build_index(demo_benchmark.db_paths[:10], demo_benchmark.db_names[:10], out, progress=False,
                settings={"codebook_size": 128}).collection.close()
    return out


def _client(app):
    pytest.importorskip("fastapi")
    if find_spec("httpx2") is None:
        pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    return TestClient(app)


def _app(index: Path, **kwargs):
    pytest.importorskip("fastapi")
    from glocal.serve.app import create_app

    return create_app(index, **kwargs)


def _upload(path: Path) -> dict:
    return {"image": (path.name, path.read_bytes(), "image/jpeg")}


class _Rechunk:
    """ASGI wrapper: delivers the request body in 64 KiB messages (as a server does) and counts how many
    body bytes the app pulled."""

    def __init__(self, app) -> None:
        self.app = app
        self.pulled = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        pending: list[bytes] = []
        done = False

        async def rechunked():
            nonlocal done
            while not pending and not done:
                message = await receive()
                if message["type"] != "http.request":
                    return message
                body = message.get("body", b"")
                pending.extend(body[i:i + 65536] for i in range(0, len(body), 65536))
                done = not message.get("more_body", False)
            if pending:
                chunk = pending.pop(0)
                self.pulled += len(chunk)
                return {"type": "http.request", "body": chunk, "more_body": bool(pending) or not done}
            return {"type": "http.request", "body": b"", "more_body": False}

        return await self.app(scope, rechunked, send)


def test_chunked_body_past_the_limit_is_refused_while_reading(index_path: Path, monkeypatch) -> None:
    import tempfile

    spooled: list[int] = []
    real = tempfile.SpooledTemporaryFile

    class Counting(real):  # the multipart parser's spool: count what it is given
        def write(self, data):
            spooled.append(len(data))
            return super().write(data)

    monkeypatch.setattr(tempfile, "SpooledTemporaryFile", Counting)
    wrapped = _Rechunk(_app(index_path, max_upload_mb=0.25))
    limit = int(0.25 * 2**20) + 2**20  # upload limit + the multipart envelope allowance
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()

    def body():  # no Content-Length: sent chunked
        yield head
        for _ in range(64):  # 64 MiB of "image"
            yield b"\xff" * 2**20

    with _client(wrapped) as c:
        res = c.post("/search", content=body(),
                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert "content-length" not in {k.lower() for k in res.request.headers}
        assert res.status_code == 413 and "limit" in res.json()["detail"]
    assert wrapped.pulled <= limit + 65536  # reading stopped at the limit, not at 64 MiB
    assert sum(spooled) <= limit


def test_declared_length_past_the_limit_is_refused_before_reading(index_path: Path) -> None:
    wrapped = _Rechunk(_app(index_path, max_upload_mb=0.1))
    with _client(wrapped) as c:
        res = c.post("/search", files={"image": ("x.jpg", b"\0" * (2 * 2**20), "image/jpeg")})
        assert res.status_code == 413 and "limit" in res.json()["detail"]
    assert wrapped.pulled == 0


def _big_cheap_png(width: int, height: int) -> bytes:
    """A real width x height 1-bit PNG of zeros: a few KiB on the wire, width*height bytes once decoded."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("1", (width, height)).save(out, format="PNG", optimize=False)
    return out.getvalue()


def test_too_many_pixels_is_refused_from_the_header(index_path: Path, monkeypatch) -> None:
    from PIL import Image

    data, big = _big_cheap_png(20000, 20000), _big_cheap_png(8000, 8000)
    assert len(data) < 2**20
    decoded = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self.size) or real_load(self))
    with _client(_app(index_path)) as c:  # default limit: 40 megapixels
        t0 = time.perf_counter()
        res = c.post("/search", files={"image": ("huge.png", data, "image/png")})
        assert time.perf_counter() - t0 < 2.0
        assert res.status_code == 413
        detail = res.json()["detail"]
        assert "huge.png" in detail and "400000000 pixels" in detail and "limit of 40000000" in detail
        res = c.post("/search", files={"image": ("big.png", big, "image/png")})
        assert res.status_code == 413
        assert "big.png" in res.json()["detail"] and "8000x8000 = 64000000 pixels" in res.json()["detail"]
    assert not decoded  # refused without decoding
    with _client(_app(index_path, max_pixels=100 * 100)) as c:
        res = c.post("/search", files={"image": ("small.png", _big_cheap_png(200, 100), "image/png")})
        assert res.status_code == 413 and "200x100" in res.json()["detail"]


def _background_search(c, path: Path, out: list) -> threading.Thread:
    t = threading.Thread(target=lambda: out.append(c.post("/search", files=_upload(path))), daemon=True)
    t.start()
    return t


def _wait_for(predicate, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_health_and_info_answer_at_once_during_a_slow_search(index_path: Path, demo_benchmark, hold) -> None:
    """The search holds the index worker's GIL (C calls of 0.1-0.3 s, as numpy / OpenCV sections do) until
    released: the HTTP process answers /health and /info within 100 ms regardless, because the worker is another
    process (a thread doing the same in the HTTP process delays them by a whole call)."""
    app = _app(index_path)
    with _client(app) as c:
        svc = app.state.service
        hold.hold()
        out: list = []
        t = _background_search(c, demo_benchmark.db_paths[0], out)
        try:
            assert hold.entered() and svc.lock.locked()
            for endpoint in ("/health", "/info", "/health"):
                t0 = time.perf_counter()
                res = c.get(endpoint)
                assert res.status_code == 200 and res.json()["images"] == 10
                assert time.perf_counter() - t0 < 0.1, endpoint
            assert res.json() == {"status": "ok", "images": 10}
        finally:
            hold.release()
            t.join(30)
        assert out[0].status_code == 200 and out[0].json()["results"][0]["name"] == demo_benchmark.db_names[0]


def test_full_queue_answers_503_at_once(index_path: Path, demo_benchmark, hold) -> None:
    app = _app(index_path, max_queue=1)
    with _client(app) as c:
        svc = app.state.service
        hold.hold()
        out: list = []
        threads = [_background_search(c, demo_benchmark.db_paths[0], out)]
        try:
            assert hold.entered()
            threads.append(_background_search(c, demo_benchmark.db_paths[1], out))  # waits: the queue is full
            _wait_for(lambda: svc.waiting == 1)
            t0 = time.perf_counter()
            res = c.post("/search", files=_upload(demo_benchmark.db_paths[2]))
            assert time.perf_counter() - t0 < 1.0
            assert res.status_code == 503 and res.headers["Retry-After"] == "1"
            assert "waiting" in res.json()["detail"]
        finally:
            hold.release()
            for t in threads:
                t.join(30)
        assert [r.status_code for r in out] == [200, 200]  # the queued request was served, not dropped
        assert svc.waiting == 0 and not svc.lock.locked()


def test_lock_timeout_answers_503(index_path: Path, demo_benchmark, hold) -> None:
    app = _app(index_path, lock_timeout=0.3)
    with _client(app) as c:
        svc = app.state.service
        hold.hold()
        out: list = []
        t = _background_search(c, demo_benchmark.db_paths[0], out)
        try:
            assert hold.entered()
            t0 = time.perf_counter()
            res = c.post("/search", files=_upload(demo_benchmark.db_paths[1]))
            elapsed = time.perf_counter() - t0
            assert res.status_code == 503 and "0.3 s" in res.json()["detail"] and res.headers["Retry-After"]
            assert 0.25 <= elapsed < 5
        finally:
            hold.release()
            t.join(30)
        assert out[0].status_code == 200 and svc.waiting == 0


def test_writes_need_the_token(index_path: Path, demo_benchmark, tmp_path: Path) -> None:
    copy = tmp_path / "w.glx"
    shutil.copytree(index_path, copy)
    path = demo_benchmark.db_paths[30]
    with _client(_app(copy, writable=True, token=TOKEN)) as c:
        assert c.get("/info").json()["service"]["token"] is True
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}):
            res = c.post("/images", files=_upload(path), data={"name": "new"}, headers=headers)
            assert res.status_code == 401 and "Bearer" in res.json()["detail"], headers
            assert res.headers["WWW-Authenticate"] == "Bearer"
            assert c.delete(f"/images/{demo_benchmark.db_names[0]}", headers=headers).status_code == 401
        assert c.get("/health").json()["images"] == 10
        auth = {"Authorization": f"Bearer {TOKEN}"}
        res = c.post("/images", files=_upload(path), data={"name": "new"}, headers=auth)
        assert res.status_code == 201 and res.json()["images"] == 11
        res = c.delete("/images/new", headers=auth)
        assert res.status_code == 200 and res.json()["images"] == 10
        assert c.post("/search", files=_upload(path)).status_code == 200  # searching needs no token


def test_writable_without_a_token_must_be_asked_for(index_path: Path, demo_benchmark, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="token"):
        _app(index_path, writable=True)
    copy = tmp_path / "w.glx"
    shutil.copytree(index_path, copy)
    with _client(_app(copy, writable=True, insecure_no_token=True)) as c:
        res = c.post("/images", files=_upload(demo_benchmark.db_paths[30]), data={"name": "new"})
        assert res.status_code == 201


@pytest.mark.parametrize("kwargs", [{"max_pixels": 0}, {"max_queue": -1}, {"lock_timeout": 0},
                                    {"lock_timeout": float("nan")}, {"max_upload_mb": 0}])
def test_bad_limits_are_refused(index_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        _app(index_path, **kwargs)


def test_past_the_queue_limit_the_body_is_not_even_read(index_path: Path, demo_benchmark, hold) -> None:
    """Admission happens before the upload arrives: the excess costs neither its body nor a worker thread."""
    from glocal.serve.app import create_app

    app = create_app(index_path, max_queue=1)
    counted = _Rechunk(app)
    with _client(counted) as c:
        svc = app.state.service
        hold.hold()
        out: list = []
        threads = [_background_search(c, demo_benchmark.db_paths[0], out)]
        try:
            assert hold.entered()
            threads.append(_background_search(c, demo_benchmark.db_paths[1], out))
            _wait_for(lambda: svc.waiting == 1)
            pulled = counted.pulled
            res = c.post("/search", files=_upload(demo_benchmark.db_paths[2]))
            assert res.status_code == 503 and res.headers["Retry-After"] == "1" and "waiting" in res.json()["detail"]
            assert counted.pulled == pulled  # refused before a byte of its body was read
            assert svc.admitted == 2
        finally:
            hold.release()
            for t in threads:
                t.join(30)
        assert [r.status_code for r in out] == [200, 200]
        assert svc.admitted == 0  # every admitted request left when answered
