"""The HTTP JSON service: one index, opened once, searched by uploading an image.

Endpoints (all answers are JSON; errors are ``{"detail": "<what went wrong>"}``):

* ``GET /health`` -> ``{"status": "ok", "images": N}``
* ``GET /info`` -> the index settings (:meth:`glocal.search.Searcher.settings`) and the service's own.
* ``POST /search`` multipart ``image`` (the query); options ``top``, ``bbox`` (``x1,y1,x2,y2``), ``rerank``,
  ``qe``, ``dba``, ``matches`` as query parameters or form fields (a form field wins over a query
  parameter of the same name) -> ``{"results": [hit, ...], "ms": milliseconds spent searching}``.
* ``POST /images`` multipart ``image`` + ``name``: index one more image (409 if the name is searchable); the upload
  is kept as ``<index>/uploads/<sha256>.<ext>`` and recorded as its source (``glocal search --draw``).
* ``DELETE /images/{name}``: remove an image from the results (404 if no searchable image has that name).
* ``GET /``: a web page to search by photo, with its thumbnails and match data (:mod:`glocal.serve.page`).

The last two answer 403 unless the service was started writable, and 401 unless the request carries
``Authorization: Bearer <token>`` with the service's token (compared with :func:`hmac.compare_digest`); a
writable service without a token must be asked for explicitly (``insecure_no_token``).

Limits against hostile or unlucky clients (each answers at once, with the reason in ``detail``):

* bytes: the body is counted while it is received, whatever ``Content-Length`` says or when it is absent
  (chunked uploads): past ``max_upload_mb`` (plus 1 MiB for the multipart envelope) reading stops and the
  answer is 413. Uploads are then copied to a temporary file and read by the same loader as files on disk
  (:func:`glocal.io.images.load_image`), so a non-image or truncated file is refused with 400 and the
  loader's reason.
* pixels: the image header is read (Pillow opens lazily) before anything is decoded; more than
  ``max_pixels`` pixels answers 413 (a decompression bomb costs a few KiB to send and GiBs to decode).
* queue: at most ``max_queue`` requests wait for the index; one more answers 503 with ``Retry-After``, before
  its body is read (the middleware admits at most ``max_queue`` + 1 index requests at a time).
* time: a request that has not obtained the index within ``lock_timeout`` seconds answers 503.

Concurrency: the searcher is opened at startup and closed at shutdown (the app's lifespan), and one
``threading.Lock`` serialises every call into it: requests are handled in parallel up to that point
(upload, validation, the pixel check) and one at a time inside the searcher. Index work runs in the service's
own pool of ``max_queue`` + 1 threads at a lower CPU priority (Linux niceness +10, inherited by the threads they
start), never on the event loop nor in the thread pool shared with other routes. Simple and correct: searches
and edits never interleave; the price is that a slow request makes the others wait, within the queue and
time bounds above. ``/health`` and ``/info`` never take the lock: they answer from values kept outside it
(and run on the event loop, not in the thread pool), so they stay quick during a long search. Run one
process per index (``glocal serve`` does): several processes would each hold their own searcher, and only
one may write.

Freshness (:mod:`glocal.serve.freshness`): :func:`create_app` verifies every checksum of the index first
(``verify=False`` skips it) and raises :class:`~glocal.errors.DamagedIndexError` naming the damage. A read-only
service compares a cheap fingerprint of the folder (a few ``stat`` calls) under the lock before each request
that uses the searcher, and reopens the index when another process added, removed or compacted; ``/health``
then counts the reopened index's images.
"""
from __future__ import annotations

import asyncio
import functools
import hmac
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile

from glocal import __version__
from glocal.errors import GlocalError
from glocal.index.builder import add_images
from glocal.io.images import ImageReadError, parse_box
from glocal.serve.freshness import index_fingerprint, keep_upload, refuse_damaged
from glocal.serve.limits import BodyLimit, check_pixels, lower_priority, saved_upload, upload_label
from glocal.serve.page import add_page_routes

MAX_TOP = 10_000
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_QUEUE = 8
DEFAULT_LOCK_TIMEOUT = 30.0
_FORM_OVERHEAD = 1 << 20  # request bytes allowed beyond the upload limit: multipart headers, form fields
_RETRY_AFTER = "1"  # seconds, in 503 answers
class _Service:
    """The state behind one app: the searcher, its lock, and values readable without the lock."""

    def __init__(self, index_path: Path, writable: bool, max_upload_mb: float, max_pixels: int, max_queue: int,
                 lock_timeout: float, token: str | None) -> None:
        self.index_path = Path(index_path)
        self.writable = writable
        self.max_upload_mb = max_upload_mb
        self.max_upload_bytes = int(max_upload_mb * 2**20)
        self.max_body_bytes = self.max_upload_bytes + _FORM_OVERHEAD
        self.max_pixels = max_pixels
        self.max_queue = max_queue
        self.lock_timeout = lock_timeout
        self.token = token.encode() if token else None
        self.lock = threading.Lock()
        self.waiting = 0  # requests waiting for ``lock``; guarded by ``_waiting_lock``
        self._waiting_lock = threading.Lock()
        self.admitted = 0  # index requests between admission and their answer (event loop only)
        self.pool: ThreadPoolExecutor | None = None  # the index workers, while the app runs
        self.searcher: Any = None
        self.settings: dict = {}
        self.images = 0
        self.fingerprint: tuple | None = None  # of the folder the open searcher reads (read-only services)

    def _open_searcher(self) -> Any:
        from glocal.index.collection import Collection
        from glocal.search import Searcher

        if not self.writable:  # taken before opening: a change made meanwhile is seen by the next request
            self.fingerprint = index_fingerprint(self.index_path)
        return Searcher(Collection.open(self.index_path, writable=self.writable))

    def open(self) -> None:
        # index work runs here, never on the event loop nor in the shared thread pool: at most one request at the
        # index plus ``max_queue`` waiting are ever admitted, so a thread is always free for an admitted one
        self.pool = ThreadPoolExecutor(max_workers=self.max_queue + 1, thread_name_prefix="glocal-index",
                                       initializer=lower_priority)
        searcher = self._open_searcher()
        self.settings = _json_safe(searcher.settings())  # once: it may hash a model checkpoint
        self.images = len(searcher)
        self.searcher = searcher

    def _refresh(self) -> None:
        """(read-only, under ``lock``) Reopen the index when another process changed it on disk (``glocal index
        add/remove/compact``). If reopening fails (e.g. mid-swap of a compaction) the open searcher stays and the
        next request tries again."""
        if self.writable or self.searcher is None or index_fingerprint(self.index_path) == self.fingerprint:
            return
        try:
            fresh = self._open_searcher()
        except (GlocalError, OSError):
            self.fingerprint = None
            return
        fresh._extractor = self.searcher._extractor  # same method and options: keep the loaded model
        old, self.searcher = self.searcher, fresh
        self.images = len(fresh)
        old.close()

    def close(self) -> None:
        with self.lock:
            if self.searcher is not None:
                self.searcher.close()
                self.searcher = None
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None

    def admission_refusal(self) -> HTTPException | None:
        """(event loop, before the body is read) 503 when ``max_queue`` + 1 index requests are already admitted
        (one at the index, ``max_queue`` waiting for it): the excess costs neither its upload nor a thread."""
        if self.admitted > self.max_queue:
            return HTTPException(503, f"busy: {self.admitted - 1} requests are already waiting for the index "
                                      f"(the limit is {self.max_queue}); retry later",
                                 headers={"Retry-After": _RETRY_AFTER})
        return None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the index worker pool, awaited from the event loop."""
        if self.pool is None:
            raise HTTPException(503, "the index is not open (the service is starting or stopping)")
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(fn, *args))

    @contextmanager
    def searcher_locked(self) -> Iterator[Any]:
        """The searcher, alone; 503 at once when ``max_queue`` requests already wait, or after
        ``lock_timeout`` seconds without the lock."""
        with self._waiting_lock:
            if self.waiting >= self.max_queue:
                raise HTTPException(503, f"busy: {self.waiting} requests are already waiting for the index "
                                         f"(the limit is {self.max_queue}); retry later",
                                    headers={"Retry-After": _RETRY_AFTER})
            self.waiting += 1
        try:
            acquired = self.lock.acquire(timeout=self.lock_timeout)
        finally:
            with self._waiting_lock:
                self.waiting -= 1
        if not acquired:
            raise HTTPException(503, f"busy: the index was not free within {self.lock_timeout:g} s; retry later",
                                headers={"Retry-After": _RETRY_AFTER})
        try:
            if self.searcher is None:
                raise HTTPException(503, "the index is not open (the service is starting or stopping)")
            self._refresh()
            yield self.searcher
            self.images = len(self.searcher)
        finally:
            self.lock.release()

    def write_refusal(self, authorization: str | None) -> HTTPException | None:
        """Why a write request is refused (403 read-only, 401 no or wrong token), or None."""
        if not self.writable:
            return HTTPException(403, "this service is read-only; start it with 'glocal serve INDEX --writable' "
                                      "to add or remove images")
        if self.token is None:  # writable without a token: explicitly asked for (insecure_no_token)
            return None
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token):
            return HTTPException(401, "adding or removing images needs the header 'Authorization: Bearer <token>' "
                                      "with the service's token", headers={"WWW-Authenticate": "Bearer"})
        return None


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


def _json_safe(obj: Any) -> Any:
    """A JSON round trip: numpy scalars / arrays become numbers / lists, anything else its string."""
    def default(o: Any) -> Any:
        if hasattr(o, "tolist"):
            return o.tolist()
        return str(o)

    return json.loads(json.dumps(obj, default=default))


def create_app(index_path: str | Path, writable: bool = False, max_upload_mb: float = 20, *,
               max_pixels: int = DEFAULT_MAX_PIXELS, max_queue: int = DEFAULT_MAX_QUEUE,
               lock_timeout: float = DEFAULT_LOCK_TIMEOUT, token: str | None = None,
               insecure_no_token: bool = False, verify: bool = True) -> FastAPI:
    """A FastAPI app serving the index at ``index_path``; ``writable`` enables ``POST/DELETE /images``.

    :param max_upload_mb: largest upload; bigger bodies are refused (413) while they arrive.
    :param max_pixels: largest image (width x height, from its header) accepted for decoding (413 above).
    :param max_queue: most requests waiting for the index at once; one more gets 503 + ``Retry-After``.
    :param lock_timeout: seconds a request may wait for the index before it gets 503.
    :param token: the bearer token write requests must carry. A writable app without one needs
        ``insecure_no_token=True`` (then anyone who reaches it may edit the index).
    :param verify: check every checksum of the index now (:func:`glocal.index.verify.verify_index`, reads
        every file once) and raise :class:`~glocal.errors.DamagedIndexError` naming the damage.
    """
    if max_upload_mb <= 0:
        raise ValueError(f"max_upload_mb must be positive, got {max_upload_mb}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    if max_queue < 0:
        raise ValueError(f"max_queue must be >= 0, got {max_queue}")
    if not (lock_timeout > 0 and math.isfinite(lock_timeout)):
        raise ValueError(f"lock_timeout must be a positive number of seconds, got {lock_timeout}")
    if writable and not token and not insecure_no_token:
        raise ValueError("a writable service needs a token (or insecure_no_token=True)")
    if verify:
        refuse_damaged(Path(index_path))
    svc = _Service(Path(index_path), writable, max_upload_mb, max_pixels, max_queue, lock_timeout, token or None)

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
    app.add_middleware(BodyLimit, svc=svc)

    def require_writable(request: Request) -> None:  # the middleware refuses first; this guards the routes
        refusal = svc.write_refusal(request.headers.get("authorization"))
        if refusal is not None:
            raise refusal

    @app.get("/health")
    async def health() -> dict:  # async: on the event loop, never behind busy worker threads or the lock
        return {"status": "ok", "images": svc.images}

    @app.get("/info")
    async def info() -> dict:
        return svc.settings | {"images": svc.images, "service": {
            "writable": svc.writable, "token": svc.token is not None, "max_upload_mb": svc.max_upload_mb,
            "max_pixels": svc.max_pixels, "max_queue": svc.max_queue, "lock_timeout": svc.lock_timeout,
            "version": __version__}}

    @app.post("/search")
    async def search(
        image: Annotated[UploadFile, File(description="The query image.")],
        in_query: Annotated[_SearchOptions, Depends(_query_options)],
        in_form: Annotated[_SearchOptions, Depends(_form_options)],
    ) -> dict:
        opts = in_form.over(in_query)
        box = parse_bbox(opts.bbox)
        return await svc.run(_saved_search, image, box, opts)

    def _saved_search(image: UploadFile, box: Any, opts: _SearchOptions) -> dict:
        with saved_upload(image, svc.max_upload_bytes) as path:
            check_pixels(path, image, svc.max_pixels)
            with svc.searcher_locked() as searcher:
                return _search(searcher, path, image, box, opts)

    def _search(searcher: Any, path: Path, image: UploadFile, box: Any, opts: _SearchOptions) -> dict:
        t0 = time.perf_counter()
        try:
            hits = searcher.search(path, box=box, top=opts.top or 20, rerank_top=opts.rerank, qe=opts.qe,
                                   dba=opts.dba)
        except ImageReadError as exc:
            raise HTTPException(400, f"{upload_label(image)}: {exc.reason}") from None
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        ms = (time.perf_counter() - t0) * 1000
        return {"results": [h.to_dict(with_matches=bool(opts.matches)) for h in hits], "ms": round(ms, 2)}

    @app.post("/images", status_code=201, dependencies=[Depends(require_writable)])
    async def add_image(
        image: Annotated[UploadFile, File(description="The image to index.")],
        name: Annotated[str, Form(min_length=1, max_length=1000, description="Its name in search results.")],
    ) -> dict:
        if not name.strip() or not name.isprintable():
            raise HTTPException(422, f"name: expected a non-blank name without control characters, got {name!r}")
        return await svc.run(_saved_add, image, name)

    def _saved_add(image: UploadFile, name: str) -> dict:
        with saved_upload(image, svc.max_upload_bytes) as path:
            check_pixels(path, image, svc.max_pixels)
            with svc.searcher_locked() as searcher:
                index = _add(searcher, path, image, name)
        return {"name": name, "index": index, "images": svc.images}

    def _add(searcher: Any, path: Path, image: UploadFile, name: str) -> int:
        collection = searcher.collection
        if name in set(collection.live_names().values()):
            raise HTTPException(409, f"an image named {name!r} is already in the index "
                                     "(DELETE it first to replace it)")
        kept, created = keep_upload(collection.root, path, image.filename)  # its source, for drawing matches
        failures = add_images(collection, [kept], [name], progress=False, workers=1,
                              extractor=searcher.database_extractor)
        if failures:
            if created:
                kept.unlink(missing_ok=True)
            raise HTTPException(400, f"{upload_label(image)}: {failures[0].reason}")
        return len(collection.names) - 1

    @app.delete("/images/{name:path}", dependencies=[Depends(require_writable)])
    async def remove_image(name: str) -> dict:
        return await svc.run(_remove, name)

    def _remove(name: str) -> dict:
        with svc.searcher_locked() as searcher:
            missing = searcher.collection.remove([name])
        if missing:
            raise HTTPException(404, f"no image named {name!r} in the index")
        return {"removed": name, "images": svc.images}

    add_page_routes(app, svc)  # the web page at / (glocal.serve.page)
    return app
