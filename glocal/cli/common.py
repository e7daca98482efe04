"""Shared CLI pieces: exit codes, consoles, argument parsing helpers."""
from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

#: Exit codes scripts can rely on.
EXIT_OK = 0
EXIT_PARTIAL = 1  # the job finished, but some input files were skipped (listed on stderr)
EXIT_USAGE = 2  # bad command-line arguments (typer/click's own code)
EXIT_INPUT = 3  # the job could not run: index or query missing, unreadable or corrupt

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


def parse_settings(items: list[str]) -> dict:
    """``KEY=VALUE`` strings to a dict; VALUE is read as JSON when it parses, else kept as a string."""
    import json

    conf = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        try:
            conf[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            conf[key.strip()] = value
    return conf


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
    """``--checkpoint``: a file path, or a published name (:data:`glocal.weights.REGISTRY`) downloaded into
    the cache on first use; exits with :data:`EXIT_INPUT` and the reason when neither works."""
    import typer
    from rich.markup import escape

    from glocal.weights import WeightsError, resolve_checkpoint

    if value is None:
        return None
    try:
        return str(resolve_checkpoint(value, method, progress=show_progress()))
    except WeightsError as exc:
        err.print(f"[red]error[/red]: {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_INPUT) from None
