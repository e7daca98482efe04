"""``glocal serve INDEX``: the HTTP JSON service (needs ``pip install 'glocal[serve]'``).

This module imports neither FastAPI nor uvicorn at import time, so the command (and its ``--help``) is
there without the extras; running it without them exits with :data:`EXIT_INPUT` and says what to install.
"""
from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from glocal.cli.common import EXIT_INPUT, err

MISSING_EXTRAS = "needs the service extras: pip install 'glocal[serve]'"


def serve_command(
    index: Path = typer.Argument(..., help="Index folder built with 'glocal index build'."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 for every interface)."),
    port: int = typer.Option(8080, "--port", "-p", min=1, max=65535, help="TCP port."),
    writable: bool = typer.Option(False, "--writable", help="Allow POST /images and DELETE /images/NAME."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", min=0.001, help="Largest accepted upload, MiB."),
) -> None:
    """Serve an index over HTTP: POST /search with an image; GET /health, GET /info (docs at /docs)."""
    from importlib.util import find_spec

    try:
        import fastapi  # noqa: F401
        import uvicorn
        if find_spec("python_multipart") is None and find_spec("multipart") is None:  # FastAPI's form parser
            raise ImportError("python-multipart")
    except ImportError:
        err.print(f"[red]error[/red]: 'glocal serve' {escape(MISSING_EXTRAS)}", highlight=False)
        raise typer.Exit(EXIT_INPUT) from None
    from glocal.cli.index_cmd import _open
    from glocal.serve.app import create_app

    _open(index, writable=writable).close()  # refuse a missing or damaged index before listening
    uvicorn.run(create_app(index, writable=writable, max_upload_mb=max_upload_mb), host=host, port=port,
                log_level="info")
