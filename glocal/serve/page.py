"""The service's web page: search by photo in a browser (``glocal serve INDEX``, then open ``/``).

Routes added to the app of :func:`glocal.serve.app.create_app` by :func:`add_page_routes`:

* ``GET /`` -> the page (``static/index.html``), ``GET /static/{name}`` -> its scripts and style sheet. The
  files ship with the package (read through :mod:`importlib.resources`); no build step and nothing fetched
  from elsewhere, so the page works offline. Only those files can be asked for: the name is looked up in a
  fixed table, never joined to a path.
* ``GET /thumbnails/{index}?size=small|large`` -> a JPEG of the indexed image at position ``index`` (longest
  side 256 or 1024 pixels, EXIF orientation applied as when it was indexed), read from the source the index
  recorded for it (``sources.jsonl``; uploads live in ``<index>/uploads``). The client names an integer,
  never a path. 404 with the reason in ``detail`` for an unknown or removed position and for a source file
  that is gone; the page shows a placeholder instead. Answers carry an ``ETag`` (name, source file, size,
  mtime) and are revalidated (``Cache-Control: no-cache``), so an index renumbered by compaction never shows
  a stale picture; resized pictures are kept in a small in-memory cache.
* ``GET /thumbnails/{index}/info`` -> ``{"index", "name", "width", "height"}``: the image's size in original
  pixels (after EXIF orientation), the frame of the inlier matches ``/search?matches=true`` returns; the page
  scales them to what it draws.
* ``GET /page/facts`` -> images, method, bytes on disk of the index folder, whether the service is writable
  and needs a token, and its upload limit: the page's header.

Looking up a position is a request to the index worker, queued like a search (names and sources change when
images are added or another process compacts); resizing happens in this process, outside the queue.
"""
from __future__ import annotations

import hashlib
import io
import os
import threading
import warnings
from collections import OrderedDict
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response

#: longest side of a thumbnail, by the ``size`` the page asks for
SIDES = {"small": 256, "large": 1024}
#: the page's files: name -> media type (the only names ``/static/`` answers)
STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "match.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
CACHE_BYTES = 48 << 20  # resized pictures kept in memory
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


def static_file(name: str) -> bytes:
    """One of the page's packaged files (``glocal/serve/static/<name>``)."""
    return resources.files("glocal.serve").joinpath("static", name).read_bytes()


class _Thumbnails:
    """Resized JPEGs by (image, size), least recently used dropped past :data:`CACHE_BYTES`."""

    def __init__(self, budget: int = CACHE_BYTES) -> None:
        self.budget = budget
        self.used = 0
        self.items: OrderedDict[str, tuple[bytes, int, int]] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: str) -> tuple[bytes, int, int] | None:
        with self.lock:
            item = self.items.get(key)
            if item is not None:
                self.items.move_to_end(key)
            return item

    def put(self, key: str, item: tuple[bytes, int, int]) -> None:
        with self.lock:
            if key in self.items:
                return
            self.items[key] = item
            self.used += len(item[0])
            while self.used > self.budget and len(self.items) > 1:
                _, (data, _, _) = self.items.popitem(last=False)
                self.used -= len(data)


def _resized(path: Path, side: int | None, max_pixels: int) -> tuple[bytes | None, int, int]:
    """(JPEG of ``path`` with its longest side <= ``side`` or None when ``side`` is None, width, height in
    original pixels after EXIF orientation). Raises OSError / ValueError for a file Pillow cannot read."""
    from PIL import Image, ImageOps

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ValueError(f"{w}x{h} pixels, over the limit of {max_pixels}")
            if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                w, h = h, w
            if side is None:
                return None, w, h
            img.draft("RGB", (side, side))  # JPEG: decode at a reduced scale, much faster for big photos
            img = ImageOps.exif_transpose(img)
            img = img.convert("RGB")
            img.thumbnail((side, side), Image.Resampling.LANCZOS)
            out = io.BytesIO()
            img.save(out, "JPEG", quality=85)
    return out.getvalue(), w, h


def _folder_bytes(root: Path) -> int:
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except OSError:
                continue
    return total


def add_page_routes(app: FastAPI, svc: Any) -> None:
    """Register the web page's routes on ``app``; ``svc`` is the app's service state (:mod:`glocal.serve.app`)."""
    from glocal.io.images import MAX_PIXELS

    pages = {name: static_file(name) for name in STATIC}  # read once: a missing file fails at startup
    cache = _Thumbnails()

    def lookup(index: int) -> tuple[str, Path]:
        """(name, source file) of the image at ``index``; 404 naming the reason."""
        name, source = svc.call("lookup", index)  # the index worker's answer; 404 with the reason
        if source is None:
            raise HTTPException(404, f"the index has no record of where {name!r} was read from")
        source = Path(source)
        if not source.is_file():
            raise HTTPException(404, f"the image file of {name!r} is no longer where it was indexed")
        return name, source

    def picture(index: int, size: str | None) -> tuple[str, str, bytes | None, int, int]:
        name, source = lookup(index)
        st = source.stat()
        tag = hashlib.sha256(f"{name}\0{source}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:32]
        key = f"{tag}:{size}"
        hit = cache.get(key)
        if hit is not None:
            return name, tag, *hit
        try:
            data, w, h = _resized(source, SIDES[size] if size else None, MAX_PIXELS)
        except (OSError, ValueError, SyntaxError) as exc:
            raise HTTPException(404, f"the image file of {name!r} cannot be read ({exc.__class__.__name__})") from None
        if data is not None:
            cache.put(key, (data, w, h))
        return name, tag, data, w, h

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return Response(pages["index.html"], media_type=STATIC["index.html"],
                        headers=_SECURITY_HEADERS | {"Cache-Control": "no-cache"})

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in STATIC or name == "index.html":
            raise HTTPException(404, f"no page file named {name!r}")
        return Response(pages[name], media_type=STATIC[name],
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    @app.get("/thumbnails/{index}", response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "unknown, removed or unreadable"}})
    def thumbnail(index: int, request: Request,
                  size: Literal["small", "large"] = Query("small", description="small: 256 px, large: 1024 px")
                  ) -> Response:
        """A JPEG of the indexed image at position ``index`` (from the file it was indexed from)."""
        name, tag, data, w, h = picture(index, size)
        etag = f'"{tag}-{size}"'
        headers = {"ETag": etag, "Cache-Control": "no-cache", "X-Image-Width": str(w), "X-Image-Height": str(h),
                   "X-Content-Type-Options": "nosniff"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(data, media_type="image/jpeg", headers=headers)

    @app.get("/thumbnails/{index}/info")
    def thumbnail_info(index: int) -> dict:
        """Name and size (original pixels, the frame of the inlier matches) of the image at ``index``."""
        name, _tag, _data, w, h = picture(index, None)
        return {"index": index, "name": name, "width": w, "height": h}

    @app.get("/page/facts")
    def facts() -> JSONResponse:
        """What the page's header shows about the index and the service."""
        return JSONResponse({"images": svc.images, "method": svc.settings.get("method"),
                             "bytes": _folder_bytes(svc.index_path), "writable": svc.writable,
                             "token": svc.token is not None, "max_upload_mb": svc.max_upload_mb},
                            headers={"Cache-Control": "no-cache"})
