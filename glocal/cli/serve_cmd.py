"""``glocal serve INDEX``: the HTTP JSON service (needs ``pip install 'glocal[serve]'``).

This module imports neither FastAPI nor uvicorn at import time, so the command (and its ``--help``) is
there without the extras; running it without them exits with :data:`EXIT_INPUT` and says what to install.
"""
from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.markup import escape

from glocal.cli.common import EXIT_USAGE, err

MISSING_EXTRAS = "needs the service extras: pip install 'glocal[serve]'"
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
# the defaults of glocal.serve.app (kept here too: this module must not import FastAPI)
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_QUEUE = 8
DEFAULT_LOCK_TIMEOUT = 30.0
DEFAULT_REQUEST_TIMEOUT = 60.0
SWITCH_INTERVAL = 0.001  # seconds


def serve_command(
    index: Path = typer.Argument(..., help="Index folder built with 'glocal index build'."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 for every interface)."),
    port: int = typer.Option(8080, "--port", "-p", min=1, max=65535, help="TCP port."),
    writable: bool = typer.Option(False, "--writable", help="Allow POST /images and DELETE /images/NAME."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", min=0.001,
                                        help="Largest accepted upload, MiB (413 past it, even when chunked)."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", min=1,
                                   help="Largest accepted image, width x height from its header (413 above)."),
    max_queue: int = typer.Option(DEFAULT_MAX_QUEUE, "--max-queue", min=0,
                                  help="Most requests waiting for the index; one more gets 503 + Retry-After."),
    lock_timeout: float = typer.Option(DEFAULT_LOCK_TIMEOUT, "--lock-timeout", min=0.001,
                                       help="Seconds a request may wait for the index before it gets 503."),
    request_timeout: float = typer.Option(DEFAULT_REQUEST_TIMEOUT, "--request-timeout", min=0.001,
                                          help="Seconds the index worker may spend on one request; past it the "
                                               "request gets 503 and the worker is killed and restarted."),
    token: str = typer.Option("", "--token", envvar="GLOCAL_TOKEN", show_default=False,
                              help="Bearer token that POST /images and DELETE /images/NAME must carry "
                                   "(or env GLOCAL_TOKEN)."),
    insecure_no_token: bool = typer.Option(False, "--insecure-no-token",
                                           help="Allow --writable without a token (loopback --host only)."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip checking every checksum of the index at "
                                   "startup (a damaged index is refused otherwise)."),
) -> None:
    """Serve an index over HTTP: POST /search with an image; GET /health, GET /info (docs at /docs)."""
    from importlib.util import find_spec

    if writable and not token and not (insecure_no_token and host in LOOPBACK_HOSTS):
        reason = ("--insecure-no-token is only allowed with a loopback --host (127.0.0.1, ::1, localhost)"
                  if insecure_no_token else "pass --token (or set GLOCAL_TOKEN), or --insecure-no-token on a "
                  "loopback --host")
        err.print(f"[red]error[/red]: --writable needs a token: {escape(reason)}", highlight=False)
        raise typer.Exit(EXIT_USAGE)

    try:
        import fastapi  # noqa: F401
        import uvicorn
        if find_spec("python_multipart") is None and find_spec("multipart") is None:  # FastAPI's form parser
            raise ImportError("python-multipart")
    except ImportError:
        from glocal.errors import MissingDependencyError

        raise MissingDependencyError(f"'glocal serve' {MISSING_EXTRAS}") from None
    from glocal.cli.index_cmd import _open
    from glocal.serve.app import create_app

    _open(index, writable=writable).close()  # refuse a missing or damaged index before listening
    app = create_app(index, writable=writable, max_upload_mb=max_upload_mb, max_pixels=max_pixels,
                     max_queue=max_queue, lock_timeout=lock_timeout, request_timeout=request_timeout,
                     token=token or None, insecure_no_token=insecure_no_token, verify=not no_verify)
    # index work runs in its own process (glocal.serve.worker); this one only serves, and its few threads (saving
    # uploads, waiting for the worker) hand the GIL to the event loop every 1 ms (Python's default is 5)
    sys.setswitchinterval(SWITCH_INTERVAL)
    uvicorn.run(app, host=host, port=port, log_level="info")
