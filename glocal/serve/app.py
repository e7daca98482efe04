"""The HTTP JSON service: one index, opened once, searched by uploading an image.

Endpoints (all answers are JSON; errors are ``{"detail": "<what went wrong>"}``):

* ``GET /health`` -> ``{"status": "ok", "images": N}`` while the index worker runs; otherwise ``{"status":
  "degraded", "images": N, "worker": "starting" | "restarting" | "failed" | "stopped", "detail": why}`` (status
  200 while it is being restarted, 503 when it could not be or the service is stopping).
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
* time: a request that has not obtained the index within ``lock_timeout`` seconds answers 503; one that the index
  worker has not answered within ``request_timeout`` seconds answers 503, and the worker is killed and restarted.

Concurrency: all index work runs in a separate process (:mod:`glocal.serve.worker`; its code:
:mod:`glocal.serve.index_work`) that opens the index at startup and owns it; this process never opens it. It
parses requests, enforces the limits, saves uploads to temporary files (the worker reads them by path) and
queues: one ``threading.Lock`` lets one request at a time talk to the worker, and the requests waiting for it
wait in the service's own pool of ``max_queue`` + 1 threads, never on the event loop nor in the thread pool
shared with other routes. Searches and edits never interleave; a slow request makes the others wait, within the
queue and time bounds above. The worker runs at a lower CPU priority (niceness +10), and nothing it does (GIL held
in numpy, OpenCV or PyTorch, Python loops) can delay this process: ``/health`` and ``/info`` take no lock and run
on the event loop, answering from values the worker reported with its last answer. A worker that dies (killed,
out of memory, a crash in native code) is noticed at once: the request in flight gets one 503 saying so, and a new
worker is started (requests queue behind the restart within ``lock_timeout``). Run one service per index
(``glocal serve`` does): several would each hold their own worker, and only one may write.

Freshness (:mod:`glocal.serve.freshness`): :func:`create_app` verifies every checksum of the index first
(``verify=False`` skips it) and raises :class:`~glocal.errors.DamagedIndexError` naming the damage. A read-only
worker compares a cheap fingerprint of the folder (a few ``stat`` calls) before each request and reopens the
index when another process added, removed or compacted; ``/health`` then counts the reopened index's images.
"""
from __future__ import annotations

import asyncio
import functools
import hmac
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse

from glocal import __version__
from glocal.io.images import parse_box
from glocal.serve.freshness import refuse_damaged
from glocal.serve.index_work import WorkerError
from glocal.serve.limits import BodyLimit, check_pixels, saved_upload, upload_label
from glocal.serve.page import add_page_routes
from glocal.serve.worker import IndexWorker

MAX_TOP = 10_000
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_QUEUE = 8
DEFAULT_LOCK_TIMEOUT = 30.0
DEFAULT_REQUEST_TIMEOUT = 60.0
_FORM_OVERHEAD = 1 << 20  # request bytes allowed beyond the upload limit: multipart headers, form fields
_RETRY_AFTER = "1"  # seconds, in 503 answers
class _Service:
    """The state behind one app: the index worker, the lock that serialises requests to it, the queue counters,
    and values readable without the lock."""

    def __init__(self, index_path: Path, writable: bool, max_upload_mb: float, max_pixels: int, max_queue: int,
                 lock_timeout: float, request_timeout: float, token: str | None) -> None:
        self.index_path = Path(index_path)
        self.writable = writable
        self.max_upload_mb = max_upload_mb
        self.max_upload_bytes = int(max_upload_mb * 2**20)
        self.max_body_bytes = self.max_upload_bytes + _FORM_OVERHEAD
        self.max_pixels = max_pixels
        self.max_queue = max_queue
        self.lock_timeout = lock_timeout
        self.request_timeout = request_timeout
        self.token = token.encode() if token else None
        self.lock = threading.Lock()
        self.waiting = 0  # requests waiting for ``lock``; guarded by ``_waiting_lock``
        self.pending = 0  # requests waiting for ``lock`` or holding it; guarded by ``_waiting_lock``
        self._waiting_lock = threading.Lock()
        self.admitted = 0  # index requests between admission and their answer (event loop only)
        self.pool: ThreadPoolExecutor | None = None  # the threads that wait for the worker, while the app runs
        self.worker = IndexWorker(self.index_path, writable, self.lock)

    @property
    def images(self) -> int:
        return self.worker.images

    @property
    def settings(self) -> dict:
        return self.worker.settings

    def open(self) -> None:
        # requests wait for the worker here, never on the event loop nor in the shared thread pool: at most one
        # request at the index plus ``max_queue`` waiting are ever admitted, so a thread is always free for one.
        # These threads keep the event loop's priority: they share its GIL, and a lower-priority thread descheduled
        # while it holds the GIL would make the event loop wait for it (priority inversion)
        self.pool = ThreadPoolExecutor(max_workers=self.max_queue + 1, thread_name_prefix="glocal-index")
        self.worker.start()

    def close(self) -> None:
        self.worker.close()
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None

    def health(self) -> tuple[int, dict]:
        """(event loop, no lock) ``/health``'s status and answer: ok, or what the index worker is doing."""
        state = self.worker.status
        if state == "ready":
            return 200, {"status": "ok", "images": self.images}
        body = {"status": "degraded", "images": self.images, "worker": state, "detail": self.worker.detail}
        return (503 if state in ("failed", "stopped") else 200), body

    def admission_refusal(self) -> HTTPException | None:
        """(event loop, before the body is read) 503 when ``max_queue`` + 1 index requests are already admitted
        (one at the index, ``max_queue`` waiting for it): the excess costs neither its upload nor a thread."""
        if self.admitted > self.max_queue:
            return HTTPException(503, f"busy: {self.admitted - 1} requests are already waiting for the index "
                                      f"(the limit is {self.max_queue}); retry later",
                                 headers={"Retry-After": _RETRY_AFTER})
        return None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the service's pool, awaited from the event loop."""
        if self.pool is None:
            raise HTTPException(503, "the index is not open (the service is starting or stopping)")
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(fn, *args))

    def call(self, op: str, *args: Any) -> Any:
        """(a pool thread) ``op(*args)`` run by the index worker, alone. 503 at once when ``max_queue`` requests
        already wait, after ``lock_timeout`` seconds without the worker, when the worker stopped during the request
        or overran ``request_timeout`` seconds (it is killed and restarted); the worker's own refusals keep their
        status."""
        with self._waiting_lock:
            # one at the worker and max_queue waiting: counted as requests in this method, so a waiter that has
            # just been given the lock but not yet run (its thread starved on a busy machine) is not counted twice
            if self.pending > self.max_queue:
                raise HTTPException(503, f"busy: {self.pending - 1} requests are already waiting for the index "
                                         f"(the limit is {self.max_queue}); retry later",
                                    headers={"Retry-After": _RETRY_AFTER})
            self.pending += 1
            self.waiting += 1
        try:
            acquired = self.lock.acquire(timeout=self.lock_timeout)
        finally:
            with self._waiting_lock:
                self.waiting -= 1
        try:
            if not acquired:
                raise HTTPException(503, f"busy: the index was not free within {self.lock_timeout:g} s; retry "
                                         "later", headers={"Retry-After": _RETRY_AFTER})
            try:
                return self.worker.call(op, args, self.request_timeout)
            except WorkerError as exc:
                raise HTTPException(exc.status, exc.detail,
                                    headers={"Retry-After": _RETRY_AFTER} if exc.status == 503 else None) from None
            finally:
                self.lock.release()
        finally:
            with self._waiting_lock:
                self.pending -= 1

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


def create_app(index_path: str | Path, writable: bool = False, max_upload_mb: float = 20, *,
               max_pixels: int = DEFAULT_MAX_PIXELS, max_queue: int = DEFAULT_MAX_QUEUE,
               lock_timeout: float = DEFAULT_LOCK_TIMEOUT, request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
               token: str | None = None, insecure_no_token: bool = False, verify: bool = True) -> FastAPI:
    """A FastAPI app serving the index at ``index_path``; ``writable`` enables ``POST/DELETE /images``.

    The app starts its index worker process when it starts (its lifespan) and stops it when it stops. The worker
    is started with ``multiprocessing``'s ``spawn``, which imports the main module again: a script that serves
    the app itself (``uvicorn.run(app)``) must do so under ``if __name__ == "__main__":``.

    :param max_upload_mb: largest upload; bigger bodies are refused (413) while they arrive.
    :param max_pixels: largest image (width x height, from its header) accepted for decoding (413 above).
    :param max_queue: most requests waiting for the index at once; one more gets 503 + ``Retry-After``.
    :param lock_timeout: seconds a request may wait for the index before it gets 503.
    :param request_timeout: seconds the index worker may spend on one request; past it the worker is killed and
        restarted, and the request gets 503.
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
    if not (request_timeout > 0 and math.isfinite(request_timeout)):
        raise ValueError(f"request_timeout must be a positive number of seconds, got {request_timeout}")
    if writable and not token and not insecure_no_token:
        raise ValueError("a writable service needs a token (or insecure_no_token=True)")
    if verify:
        refuse_damaged(Path(index_path))
    svc = _Service(Path(index_path), writable, max_upload_mb, max_pixels, max_queue, lock_timeout, request_timeout,
                   token or None)

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
    async def health() -> JSONResponse:  # async: on the event loop, never behind the pool threads or the lock
        status, body = svc.health()
        return JSONResponse(body, status_code=status)

    @app.get("/info")
    async def info() -> dict:
        return svc.settings | {"images": svc.images, "service": {
            "writable": svc.writable, "token": svc.token is not None, "max_upload_mb": svc.max_upload_mb,
            "max_pixels": svc.max_pixels, "max_queue": svc.max_queue, "lock_timeout": svc.lock_timeout,
            "request_timeout": svc.request_timeout, "worker": svc.worker.status, "worker_restarts": svc.worker.restarts,
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
            return svc.call("search", str(path), upload_label(image), box, opts.top or 20, opts.rerank, opts.qe,
                            opts.dba, bool(opts.matches))

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
            index = svc.call("add", str(path), upload_label(image), image.filename, name)
        return {"name": name, "index": index, "images": svc.images}

    @app.delete("/images/{name:path}", dependencies=[Depends(require_writable)])
    async def remove_image(name: str) -> dict:
        return await svc.run(_remove, name)

    def _remove(name: str) -> dict:
        svc.call("remove", name)
        return {"removed": name, "images": svc.images}

    add_page_routes(app, svc)  # the web page at / (glocal.serve.page)
    return app
