"""Shared fixtures: a generated landmark benchmark and its index, built once per test session."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def torch_one_thread() -> Iterator[None]:
    """One intra-op thread for a whole test module (``pytestmark = pytest.mark.usefixtures(...)``): on a
    shared 2-core machine two OpenMP threads are many times slower."""
    from glocal.models.extractor_base import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def demo_benchmark(tmp_path_factory: pytest.TempPathFactory):
    from glocal.demo.synthetic import make_benchmark

    return make_benchmark(tmp_path_factory.mktemp("bench"), seed=0)


@pytest.fixture(scope="session")
def demo_index(demo_benchmark, tmp_path_factory: pytest.TempPathFactory):
    from glocal.index.builder import build_index
    from glocal.search import Searcher

    out = tmp_path_factory.mktemp("idx") / "demo.glx"
    searcher = Searcher(build_index(demo_benchmark.db_paths, demo_benchmark.db_names, out, progress=False).collection)
    yield searcher
    searcher.close()


@pytest.fixture
def photo_path(tmp_path: Path) -> Path:
    """A real photo (scikit-image's astronaut) written as JPEG."""
    from PIL import Image
    from skimage import data

    p = tmp_path / "astronaut.jpg"
    Image.fromarray(data.astronaut()).save(p, quality=92)
    return p


# -- a local HTTP server for download tests (dataset and weight downloads) -----------------------------
@dataclass
class FileServer:
    """Serves ``files`` by path; ``cut[path] = n`` sends only n bytes of the next full response."""

    files: dict[str, bytes] = field(default_factory=dict)
    cut: dict[str, int] = field(default_factory=dict)
    ignore_range: bool = False
    ranges: list[str | None] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def server() -> Iterator[FileServer]:
    state = FileServer()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            data = state.files.get(self.path)
            state.ranges.append(self.headers.get("Range"))
            if data is None:
                self.send_error(404, "not found")
                return
            start = 0
            header = self.headers.get("Range")
            if header and not state.ignore_range:
                start = int(header.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            n = state.cut.pop(self.path, None)
            self.wfile.write(body if n is None else body[:n])
            self.wfile.flush()
            if n is not None:
                self.close_connection = True

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
