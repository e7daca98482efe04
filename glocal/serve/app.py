"""The HTTP JSON service: one index, opened once, searched by uploading an image.

Endpoints (all answers are JSON; errors are ``{"detail": "<what went wrong>"}``):

* ``GET /health`` -> ``{"status": "ok", "images": N}``
* ``GET /info`` -> the index settings (:meth:`glocal.search.Searcher.settings`) and the service's own.
* ``POST /search`` multipart ``image`` (the query); options ``top``, ``bbox`` (``x1,y1,x2,y2``), ``rerank``,
  ``qe``, ``dba``, ``matches`` as query parameters or form fields (a form field wins over a query
  parameter of the same name) -> ``{"results": [hit, ...], "ms": milliseconds spent searching}``.
* ``POST /images`` multipart ``image`` + ``name``: index one more image (409 if the name is searchable).
* ``DELETE /images/{name}``: remove an image from the results (404 if no searchable image has that name).

The last two answer 403 unless the service was started writable.

Uploads are copied to a temporary file (refused with 413 past ``max_upload_mb``) and read by the same
loader as files on disk (:func:`glocal.io.images.load_image`), so a non-image, truncated file or
decompression bomb is refused with 400 and the loader's reason.

Concurrency: the searcher is opened at startup and closed at shutdown (the app's lifespan), and one
``threading.Lock`` serialises every call into it: requests are handled in parallel up to that point
(upload, validation) and one at a time inside the searcher. Simple and correct: searches and edits never
interleave; the price is that a slow request makes the others wait. ``/health`` and ``/info`` answer
from values kept outside the lock, so they stay quick during a long search. Run one process per index
(``glocal serve`` does): several processes would each hold their own searcher, and only one may write.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse

from glocal import __version__
from glocal.index.builder import add_images
from glocal.io.images import ImageReadError, parse_box

MAX_TOP = 10_000
_CHUNK = 1 << 20
_FORM_OVERHEAD = 1 << 20  # request bytes allowed beyond the upload limit: multipart headers, form fields


class _Service:
    """The state behind one app: the searcher, its lock, and values readable without the lock."""

    def __init__(self, index_path: Path, writable: bool, max_upload_mb: float) -> None:
        self.index_path = Path(index_path)
        self.writable = writable
        self.max_upload_mb = max_upload_mb
        self.max_upload_bytes = int(max_upload_mb * 2**20)
        self.lock = threading.Lock()
        self.searcher: Any = None
        self.settings: dict = {}
        self.images = 0

    def open(self) -> None:
        from glocal.index.collection import Collection
        from glocal.search import Searcher

        searcher = Searcher(Collection.open(self.index_path, writable=self.writable))
        self.settings = _json_safe(searcher.settings())  # once: it may hash a model checkpoint
        self.images = len(searcher)
        self.searcher = searcher

    def close(self) -> None:
        with self.lock:
            if self.searcher is not None:
                self.searcher.close()
                self.searcher = None

    @contextmanager
    def searcher_locked(self) -> Iterator[Any]:
        with self.lock:
            if self.searcher is None:
                raise HTTPException(503, "the index is not open (the service is starting or stopping)")
            yield self.searcher
            self.images = len(self.searcher)


@dataclass
class _SearchOptions:
    top: int | None = None
    bbox: str | None = None
    rerank: int | None = None
    qe: int | None = None
    dba: int | None = None
    matches: bool | None = None

    def over(self, other: _SearchOptions) -> _SearchOptions:
        """These options, with ``other``'s where these are unset."""
        return _SearchOptions(**{f.name: getattr(self, f.name) if getattr(self, f.name) is not None
                                 else getattr(other, f.name) for f in fields(self)})


_HELP = {
    "top": "Number of results (default 20).",
    "bbox": "Query region x1,y1,x2,y2 in pixels of the uploaded image.",
    "rerank": "Shortlist size to verify (0 = no re-ranking; default from the index).",
    "qe": "alpha-QE with N vectors, query included (global methods).",
    "dba": "alpha-DBA of the database with N vectors each (global methods).",
    "matches": "Include each verified hit's inlier matches (x_q, y_q, x_db, y_db).",
}


def _query_options(
    top: Annotated[int | None, Query(ge=1, le=MAX_TOP, description=_HELP["top"])] = None,
    bbox: Annotated[str | None, Query(max_length=200, description=_HELP["bbox"])] = None,
    rerank: Annotated[int | None, Query(ge=0, le=MAX_TOP, description=_HELP["rerank"])] = None,
    qe: Annotated[int | None, Query(ge=1, le=MAX_TOP, description=_HELP["qe"])] = None,
    dba: Annotated[int | None, Query(ge=1, le=MAX_TOP, description=_HELP["dba"])] = None,
    matches: Annotated[bool | None, Query(description=_HELP["matches"])] = None,
) -> _SearchOptions:
    return _SearchOptions(top, bbox, rerank, qe, dba, matches)


def _form_options(
    top: Annotated[int | None, Form(ge=1, le=MAX_TOP, description=_HELP["top"])] = None,
    bbox: Annotated[str | None, Form(max_length=200, description=_HELP["bbox"])] = None,
    rerank: Annotated[int | None, Form(ge=0, le=MAX_TOP, description=_HELP["rerank"])] = None,
    qe: Annotated[int | None, Form(ge=1, le=MAX_TOP, description=_HELP["qe"])] = None,
    dba: Annotated[int | None, Form(ge=1, le=MAX_TOP, description=_HELP["dba"])] = None,
    matches: Annotated[bool | None, Form(description=_HELP["matches"])] = None,
) -> _SearchOptions:
    return _SearchOptions(top, bbox, rerank, qe, dba, matches)


def parse_bbox(text: str | None) -> tuple[float, float, float, float] | None:
    """``x1,y1,x2,y2`` -> a box; raises HTTP 422 naming the problem."""
    if text is None or not text.strip():
        return None
    try:
        return parse_box(text)
    except ValueError as exc:
        raise HTTPException(422, f"bbox: {exc}") from None


def _label(upload: UploadFile) -> str:
    return f"upload {upload.filename or 'image'!r}"


@contextmanager
def _saved_upload(upload: UploadFile, limit: int) -> Iterator[Path]:
    """Copy an upload to a temporary file (deleted afterwards); 413 past ``limit`` bytes, 400 when empty."""
    fd, tmp = tempfile.mkstemp(prefix="glocal-upload-")
    try:
        size = 0
        with os.fdopen(fd, "wb") as out:
            upload.file.seek(0)
            while chunk := upload.file.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise HTTPException(413, f"{_label(upload)} is larger than the limit of "
                                             f"{limit / 2**20:g} MiB")
                out.write(chunk)
        if size == 0:
            raise HTTPException(400, f"{_label(upload)} is empty")
        yield Path(tmp)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(tmp)


def _json_safe(obj: Any) -> Any:
    """A JSON round trip: numpy scalars / arrays become numbers / lists, anything else its string."""
    def default(o: Any) -> Any:
        if hasattr(o, "tolist"):
            return o.tolist()
        return str(o)

    return json.loads(json.dumps(obj, default=default))


def create_app(index_path: str | Path, writable: bool = False, max_upload_mb: float = 20) -> FastAPI:
    """A FastAPI app serving the index at ``index_path``; ``writable`` enables ``POST/DELETE /images``."""
    if max_upload_mb <= 0:
        raise ValueError(f"max_upload_mb must be positive, got {max_upload_mb}")
    svc = _Service(Path(index_path), writable, max_upload_mb)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        svc.open()
        try:
            yield
        finally:
            svc.close()

    app = FastAPI(title="glocal", version=__version__, lifespan=lifespan,
                  description="Landmark and instance-level image retrieval over one index.")
    app.state.service = svc

    @app.middleware("http")
    async def refuse_large_bodies(request: Request, call_next):
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > svc.max_upload_bytes + _FORM_OVERHEAD:
            return JSONResponse({"detail": f"request of {int(length)} bytes is larger than the upload limit of "
                                           f"{svc.max_upload_mb:g} MiB"}, status_code=413)
        return await call_next(request)

    def require_writable() -> None:
        if not svc.writable:
            raise HTTPException(403, "this service is read-only; start it with 'glocal serve INDEX --writable' "
                                     "to add or remove images")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "images": svc.images}

    @app.get("/info")
    def info() -> dict:
        return svc.settings | {"images": svc.images, "service": {
            "writable": svc.writable, "max_upload_mb": svc.max_upload_mb, "version": __version__}}

    @app.post("/search")
    def search(
        image: Annotated[UploadFile, File(description="The query image.")],
        in_query: Annotated[_SearchOptions, Depends(_query_options)],
        in_form: Annotated[_SearchOptions, Depends(_form_options)],
    ) -> dict:
        opts = in_form.over(in_query)
        box = parse_bbox(opts.bbox)
        with _saved_upload(image, svc.max_upload_bytes) as path, svc.searcher_locked() as searcher:
            t0 = time.perf_counter()
            try:
                hits = searcher.search(path, box=box, top=opts.top or 20, rerank_top=opts.rerank, qe=opts.qe,
                                     dba=opts.dba)
            except ImageReadError as exc:
                raise HTTPException(400, f"{_label(image)}: {exc.reason}") from None
            except ValueError as exc:
                raise HTTPException(400, str(exc)) from None
            ms = (time.perf_counter() - t0) * 1000
        return {"results": [h.to_dict(with_matches=bool(opts.matches)) for h in hits], "ms": round(ms, 2)}

    @app.post("/images", status_code=201, dependencies=[Depends(require_writable)])
    def add_image(
        image: Annotated[UploadFile, File(description="The image to index.")],
        name: Annotated[str, Form(min_length=1, max_length=1000, description="Its name in search results.")],
    ) -> dict:
        if not name.strip() or not name.isprintable():
            raise HTTPException(422, f"name: expected a non-blank name without control characters, got {name!r}")
        with _saved_upload(image, svc.max_upload_bytes) as path, svc.searcher_locked() as searcher:
            collection = searcher.collection
            if name in set(collection.live_names().values()):
                raise HTTPException(409, f"an image named {name!r} is already in the index "
                                         "(DELETE it first to replace it)")
            failures = add_images(collection, [path], [name], progress=False, workers=1,
                                  extractor=searcher.database_extractor)
            if failures:
                raise HTTPException(400, f"{_label(image)}: {failures[0].reason}")
            index = len(collection.names) - 1
        return {"name": name, "index": index, "images": svc.images}

    @app.delete("/images/{name:path}", dependencies=[Depends(require_writable)])
    def remove_image(name: str) -> dict:
        with svc.searcher_locked() as searcher:
            missing = searcher.collection.remove([name])
        if missing:
            raise HTTPException(404, f"no image named {name!r} in the index")
        return {"removed": name, "images": svc.images}

    return app
