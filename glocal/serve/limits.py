"""Limits of the HTTP service against hostile or unlucky clients: the request body counted while it arrives
(413), unauthorised writes and requests past the queue refused before their body is read (401 / 403 / 503),
uploads copied to a temporary file (which the index worker reads) within the byte limit, and the pixel count
read from the image header before anything is decoded (413).
See :mod:`glocal.serve.app` for the endpoints and the queue / time limits."""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from fastapi import HTTPException, UploadFile

_CHUNK = 1 << 20


def upload_label(upload: UploadFile) -> str:
    return f"upload {upload.filename or 'image'!r}"


@contextmanager
def saved_upload(upload: UploadFile, limit: int) -> Iterator[Path]:
    """Copy an upload to a temporary file (deleted afterwards); 413 past ``limit`` bytes, 400 when empty."""
    fd, tmp = tempfile.mkstemp(prefix="glocal-upload-")
    try:
        size = 0
        with os.fdopen(fd, "wb") as out:
            upload.file.seek(0)
            while chunk := upload.file.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise HTTPException(413, f"{upload_label(upload)} is larger than the limit of "
                                             f"{limit / 2**20:g} MiB")
                out.write(chunk)
        if size == 0:
            raise HTTPException(400, f"{upload_label(upload)} is empty")
        yield Path(tmp)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(tmp)


def check_pixels(path: Path, upload: UploadFile, max_pixels: int) -> None:
    """413 when the image header claims more than ``max_pixels`` pixels; reads the header only (Pillow
    opens lazily). Unreadable files pass: the loader refuses them with its own reason."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
    except Image.DecompressionBombError as exc:  # Pillow's own hard limit, checked when opening
        raise HTTPException(413, f"{upload_label(upload)} has more pixels than the limit of {max_pixels} (refused as a "
                                 f"possible decompression bomb: {exc})") from None
    except Exception:  # noqa: BLE001 - not an image, truncated header, ...: the loader says why
        return
    if w * h > max_pixels:
        raise HTTPException(413, f"{upload_label(upload)} is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} "
                                 "(refused as a possible decompression bomb)")


class BodyLimit:
    """ASGI middleware: refuses oversized bodies while they arrive (413), unauthorised writes before their body
    is read (401 / 403), and requests for the index past the queue limit before their body is read (503: see
    ``_Service.admission_refusal`` in :mod:`glocal.serve.app`); counts the admitted ones until their answer."""

    def __init__(self, app: Any, svc: Any) -> None:
        self.app = app
        self.svc = svc

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        svc = self.svc
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        length = headers.get(b"content-length", b"").decode("latin-1").strip()
        if length.isdigit() and int(length) > svc.max_body_bytes:
            await send_error(send, HTTPException(413, f"request of {int(length)} bytes is larger than the upload "
                                                       f"limit of {svc.max_upload_mb:g} MiB"))
            return
        method, path = scope.get("method", ""), scope.get("path", "")
        write = (method == "POST" and path.rstrip("/") == "/images") or (method == "DELETE" and path.startswith("/images/"))
        if write:
            refusal = svc.write_refusal(headers.get(b"authorization", b"").decode("latin-1"))
            if refusal is not None:
                await send_error(send, refusal)
                return
        admitted = write or (method == "POST" and path.rstrip("/") == "/search")  # requests that need the index
        if admitted:
            refusal = svc.admission_refusal()
            if refusal is not None:
                await send_error(send, refusal)
                return
            svc.admitted += 1
        received = 0
        started = False

        def leave() -> None:
            nonlocal admitted
            if admitted:
                admitted = False
                svc.admitted -= 1

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > svc.max_body_bytes:
                    raise HTTPException(413, f"request body is larger than the upload limit of "
                                             f"{svc.max_upload_mb:g} MiB (stopped reading after {received} bytes)")
            return message

        async def watched_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                leave()  # before the client can see the answer and send its next request
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except HTTPException as exc:  # raised by limited_receive outside a route (FastAPI answers inside one)
            if started:
                raise
            await send_error(send, exc)
        finally:
            leave()


async def send_error(send: Any, exc: HTTPException) -> None:
    body = json.dumps({"detail": exc.detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (exc.headers or {}).items()]
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
