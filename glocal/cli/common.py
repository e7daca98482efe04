"""Shared CLI pieces: exit codes, consoles, argument parsing helpers."""
from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

#: Exit codes scripts can rely on (the table is in :mod:`glocal.errors`).
from glocal.errors import (  # noqa: F401  (re-exported for the command modules)
    EXIT_BUSY,
    EXIT_DEPENDENCY,
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USAGE,
)

out = Console()
err = Console(stderr=True)


def parse_box(text: str | None) -> tuple[float, float, float, float] | None:
    """Parse ``x1,y1,x2,y2`` into a box (:func:`glocal.io.images.parse_box`), or exit with a usage error."""
    from glocal.io.images import parse_box as parse_box_text

    if text is None:
        return None
    try:
        return parse_box_text(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--bbox") from None


def image_names(paths: list[Path], inputs: list[Path]) -> list[str]:
    """Names for image files: the path relative to the input folder it was found in, else the file name."""
    roots = [p.resolve() for p in inputs if p.is_dir()]
    names = []
    for p in paths:
        rp = p.resolve()
        name = p.name
        for r in roots:
            if rp.is_relative_to(r):
                name = rp.relative_to(r).as_posix()
                break
        names.append(name)
    return names


def report_failures(failures: list, what: str = "skipped") -> None:
    for f in failures:
        err.print(f"[yellow]{what}[/yellow] {escape(f.path)}: {escape(f.reason)}", highlight=False)


def show_progress() -> bool:
    """Progress bars unless stderr is not a terminal and GLOCAL_PROGRESS is not set."""
    return os.environ.get("GLOCAL_PROGRESS", "1") != "0"


def checkpoint_file(value: str | Path | None, method: str) -> str | None:
    """``--checkpoint``: a file path, or a published name (:data:`glocal.weights.REGISTRY`, from the method
    registry) downloaded into the cache on first use.

    :raises glocal.weights.WeightsError: neither works (the CLI prints it on one line, exit status 3).
    """
    from glocal.weights import resolve_checkpoint

    if value is None:
        return None
    return str(resolve_checkpoint(value, method, progress=show_progress()))
