"""The service against changes on disk: a damaged index is refused at startup, a read-only service sees
``add/remove/compact`` made by another process, and images added through the service can be drawn later."""
from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import pytest
from typer.testing import CliRunner

from glocal.cli.main import app as cli_app

runner = CliRunner()
TOKEN = "fresh-token"


def _client(index: Path, **kwargs):
    pytest.importorskip("fastapi")
    if find_spec("httpx2") is None:  # starlette's TestClient takes httpx2 where installed, else httpx
        pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from glocal.serve.app import create_app

    return TestClient(create_app(index, **kwargs))


def _upload(path: Path, name: str | None = None) -> dict:
    return {"image": (name or path.name, path.read_bytes(), "image/jpeg")}


@pytest.fixture()
def small_index(demo_benchmark, tmp_path: Path) -> Path:
    from glocal.index.builder import build_index

    out = tmp_path / "x.glx"
    build_index(demo_benchmark.db_paths[:8], demo_benchmark.db_names[:8], out, progress=False,
                settings={"codebook_size": 256}).collection.close()
    return out


def _names(client, query: Path) -> list[str]:
    r = client.post("/search", files=_upload(query), params={"top": 50})
    assert r.status_code == 200, r.text
    return [h["name"] for h in r.json()["results"]]


def test_read_only_service_sees_removal_and_compaction_by_another_process(small_index: Path, demo_benchmark):
    from glocal.index.collection import Collection
    from glocal.index.compact import compact_index

    query, gone, also = demo_benchmark.db_paths[0], demo_benchmark.db_names[0], demo_benchmark.db_names[1]
    with _client(small_index) as client:
        assert client.get("/health").json()["images"] == 8
        assert gone in _names(client, query)
        with Collection.open(small_index, writable=True) as other:  # another "process"
            assert other.remove([gone]) == []
        assert gone not in _names(client, query)
        assert client.get("/health").json()["images"] == 7
        with Collection.open(small_index, writable=True) as other:
            assert other.remove([also]) == []
        inode = small_index.stat().st_ino
        compact_index(small_index)  # swaps the whole folder
        assert small_index.stat().st_ino != inode
        names = _names(client, query)
        assert gone not in names and also not in names and names
        assert client.get("/health").json()["images"] == 6
        assert client.get("/info").json()["images"] == 6


def test_damaged_segment_is_refused_at_startup(small_index: Path, monkeypatch: pytest.MonkeyPatch):
    from glocal.errors import DamagedIndexError

    segments = sorted(p for p in (small_index / "ivf").iterdir() if p.is_file() and "seg" in p.name)
    assert segments, list((small_index / "ivf").iterdir())
    data = bytearray(segments[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    segments[0].write_bytes(bytes(data))
    with pytest.raises(DamagedIndexError) as info:
        _client(small_index)
    message = str(info.value)
    assert segments[0].name in message and "\n" not in message
    _client(small_index, verify=False)  # the check can be skipped (large indexes)
    uvicorn = pytest.importorskip("uvicorn")
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("a damaged index was served"))
    result = runner.invoke(cli_app, ["serve", str(small_index)])
    assert result.exit_code == 3, result.output
    assert segments[0].name in result.output and "Traceback" not in result.output


def test_added_image_is_kept_and_can_be_drawn(small_index: Path, demo_benchmark, tmp_path: Path):
    image, name = demo_benchmark.db_paths[10], "uploaded-one"
    with _client(small_index, writable=True, token=TOKEN) as client:
        r = client.post("/images", files=_upload(image, "upload.jpg"), data={"name": name},
                        headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 201, r.text
    kept = list((small_index / "uploads").iterdir())
    assert len(kept) == 1 and kept[0].read_bytes() == image.read_bytes() and kept[0].suffix == ".jpg"
    from glocal.io.sources import SourceLog

    assert SourceLog(small_index).lookup(name) == kept[0].resolve()
    draw = tmp_path / "drawn"
    result = runner.invoke(cli_app, ["search", str(small_index), str(image), "--draw", str(draw), "--draw-top", "1"])
    assert result.exit_code == 0, result.output
    drawn = list(draw.glob("*.png"))
    assert len(drawn) == 1 and name in drawn[0].name, (result.output, drawn)


def test_uploads_survive_compaction(tmp_path: Path, demo_benchmark) -> None:
    """A live image added through the service keeps a drawable source after ``glocal index compact``."""
    from glocal.index.builder import build_index
    from glocal.index.collection import Collection
    from glocal.index.compact import compact_index
    from glocal.serve.freshness import keep_upload

    index = tmp_path / "u.glx"
    build_index(demo_benchmark.db_paths[:4], demo_benchmark.db_names[:4], index, settings={"codebook_size": 16},
                progress=False).collection.close()
    with Collection.open(index, writable=True) as collection:
        from glocal.index.builder import add_images

        kept, created = keep_upload(index, demo_benchmark.db_paths[5], "new.jpg")
        assert created and kept.parent == index / "uploads"
        assert add_images(collection, [kept], ["new.jpg"], progress=False) == []
        assert collection.remove([demo_benchmark.db_names[0]]) == []
    assert compact_index(index).dropped == 1
    with Collection.open(index) as collection:
        source = collection.sources.lookup("new.jpg")
    assert source is not None and source.is_file() and source.read_bytes() == demo_benchmark.db_paths[5].read_bytes()
