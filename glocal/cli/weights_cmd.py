"""``glocal weights list|download``: the published checkpoints that ``--checkpoint NAME`` accepts (each
method's spec names its own; :mod:`glocal.weights.published` collects them)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from glocal.cli.common import out, show_progress

app = typer.Typer(help="Published model weights: list them, download them into the cache.", no_args_is_help=True)


@app.command("list")
def list_command() -> None:
    """The published checkpoints, their method, source and whether they are in the cache."""
    from glocal.weights import cache_dir, published

    table = Table(title=f"published weights (cache: {cache_dir()})")
    for col in ("name", "method", "cached", "description", "url"):
        table.add_column(col)
    for w in published().values():
        cached = "yes" if (cache_dir() / w.filename).is_file() else "no"
        table.add_row(w.name, w.method, cached, w.description, w.url)
    out.print(table)
    from glocal.weights.backbones import backbone_packages

    packages = Table(title="weights from packages: backbones' ImageNet weights (--set backbone=NAME) and models' "
                           "(sha256 checked on load)")
    for col in ("backbone / model", "package", "licence", "size", "installed", "sha256"):
        packages.add_column(col)
    for p in backbone_packages():
        packages.add_row(p.backbone, f"{p.distribution}=={p.version}", p.licence, f"{p.size / 1e6:.1f} MB",
                         "yes" if p.installed else f"no: {p.install}", p.sha256[:16] + "...")
    out.print(packages)


@app.command("download")
def download_command(
    name: str = typer.Argument(..., help="A name from 'glocal weights list'."),
    to: Optional[Path] = typer.Option(None, "--to", help="Folder to download into instead of the cache."),
) -> None:
    """Download (resumably, verified) a published checkpoint; prints its path."""
    from glocal.weights import fetch

    path = fetch(name, progress=show_progress(), dest_dir=to)  # WeightsError: one line, exit status 3
    out.print(str(path), highlight=False)
