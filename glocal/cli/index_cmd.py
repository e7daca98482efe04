"""``glocal index build|add|info``."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from glocal.cli.common import (
    EXIT_INPUT,
    EXIT_PARTIAL,
    checkpoint_file,
    err,
    image_names,
    out,
    parse_settings,
    report_failures,
    show_progress,
)
from glocal.io.images import list_images

app = typer.Typer(help="Build, extend and inspect an index (a .glx folder).", no_args_is_help=True)


@app.command("build")
def build(
    paths: list[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively)."),
    out_path: Path = typer.Option(..., "--out", "-o", help="Index folder to create, e.g. my.glx."),
    method: str = typer.Option("sift", "--method", "-m", help="Feature method: sift (weight-free default)."),
    codebook_images: Optional[Path] = typer.Option(
        None, "--codebook-images", help="Train the visual words on this folder instead of the indexed images."),
    codebook_size: Optional[int] = typer.Option(None, "--codebook-size", help="Number of visual words (default 4096)."),
    codebook_from: Optional[Path] = typer.Option(
        None, "--codebook-from", help="Reuse the codebook (and fast quantizer) of this index of the same method."),
    workers: int = typer.Option(2, "--workers", help="Parallel extraction threads."),
    checkpoint: Optional[str] = typer.Option(
        None, "--checkpoint", help="Model weights (deep methods): a file, or a published name ('glocal weights list')."),
    max_side: Optional[int] = typer.Option(None, "--max-side", help="Resize images so the longer side is at most this."),
    settings: list[str] = typer.Option([], "--set", help="Extractor setting KEY=VALUE (VALUE as JSON, e.g. scales=[1.0]); repeatable."),
    regions: str = typer.Option("none", "--regions", help="Database regions: none, rmac or detector (ASMK methods)."),
    detector: Optional[Path] = typer.Option(None, "--detector", help="Landmark detector weights for --regions detector."),
    aggregation: Optional[str] = typer.Option(
        None, "--aggregation", help="asmk, r-asmk (default with regions) or regions (regional search, max pooling)."),
) -> None:
    """Extract features of every image and build a searchable index."""
    from glocal.engine import Engine

    missing = [p for p in paths if not p.exists()]
    if len(missing) == len(paths):
        err.print(f"[red]error[/red]: no such file or folder: {escape(', '.join(map(str, missing)))}")
        raise typer.Exit(EXIT_INPUT)
    files = list_images(paths)
    if not files:
        err.print(f"no images found in {', '.join(map(str, paths))}")
        raise typer.Exit(EXIT_INPUT)
    cb = list_images([codebook_images]) if codebook_images else None
    created = not out_path.exists()
    conf = parse_settings(settings)
    if checkpoint is not None:
        conf["checkpoint"] = checkpoint_file(checkpoint, method)
    if max_side is not None:
        conf["max_side"] = max_side
    try:
        engine = Engine.build(files, image_names(files, paths), out_path, method=method, codebook_paths=cb,
                              progress=show_progress(), codebook_size=codebook_size, workers=workers,
                              regions=regions, region_detector=str(detector) if detector else None,
                              aggregation=aggregation, codebook_from=codebook_from, **conf)
    except (FileExistsError, ValueError, TypeError, ImportError) as exc:
        err.print(f"[red]error[/red]: {escape(str(exc))}")
        _remove_partial(out_path, created)
        raise typer.Exit(EXIT_INPUT) from None
    engine.close()
    report_failures(engine.failures)
    if len(engine) == 0:
        err.print("[red]error[/red]: nothing was indexed (every image failed, see above)")
        _remove_partial(out_path, created)
        raise typer.Exit(EXIT_INPUT)
    out.print(f"indexed {len(engine)} images into {out_path} ({len(engine.failures)} skipped)")
    if engine.failures:
        raise typer.Exit(EXIT_PARTIAL)


def _remove_partial(out_path: Path, created: bool) -> None:
    """Delete an index folder this command created but could not finish (never a pre-existing folder)."""
    import shutil

    if created:
        shutil.rmtree(out_path, ignore_errors=True)


@app.command("add")
def add(
    index: Path = typer.Argument(..., help="Existing index folder."),
    paths: list[Path] = typer.Argument(..., help="Image files and/or folders to add."),
    workers: int = typer.Option(2, "--workers"),
) -> None:
    """Add images to an existing index (same method and codebook)."""
    engine = _open(index, writable=True)
    files = list_images(paths)
    before = len(engine)
    failures = engine.add(files, image_names(files, paths), progress=show_progress(), workers=workers)
    engine.close()
    report_failures(failures)
    out.print(f"added {len(engine) - before} images; the index now holds {len(engine)}")
    if failures:
        raise typer.Exit(EXIT_PARTIAL)


@app.command("remove")
def remove(
    index: Path = typer.Argument(..., help="Existing index folder."),
    names: list[str] = typer.Argument(..., help="Image names as 'glocal search' prints them."),
) -> None:
    """Remove images from an index: never returned again, their entries stay on disk (tombstoned) until
    'glocal index compact'; a removed name can be added again with 'glocal index add'."""
    engine = _open(index, writable=True)
    missing = engine.remove(names)
    for n in missing:
        err.print(f"[yellow]not in the index[/yellow]: {n}", highlight=False)
    out.print(f"removed {len(names) - len(missing)} images; the index now holds {len(engine)}")
    engine.close()
    if missing:
        raise typer.Exit(EXIT_PARTIAL)


@app.command("compact")
def compact(index: Path = typer.Argument(..., help="Existing index folder.")) -> None:
    """Rewrite an index without its removed images and give their disk space back (nothing is extracted again;
    surviving images keep their names and scores, their positions are renumbered)."""
    from glocal.compact import compact_index
    from glocal.engine import IndexError_
    from glocal.index.manifest import IndexFormatError
    from glocal.io.feature_file import FeatureFileError

    try:
        report = compact_index(index, progress=show_progress())
    except (IndexError_, FeatureFileError, IndexFormatError, OSError) as exc:
        err.print(f"[red]error[/red]: {escape(str(exc))}")
        raise typer.Exit(EXIT_INPUT) from None
    mb = 1 / 2**20
    out.print(f"dropped {report.dropped} removed images, kept {report.kept}; "
              f"{report.bytes_before * mb:,.1f} MB -> {report.bytes_after * mb:,.1f} MB")


@app.command("info")
def info(index: Path = typer.Argument(..., help="Index folder."), as_json: bool = typer.Option(False, "--json")) -> None:
    """Images, visual words per image, bytes per image and total size."""
    import json

    engine = _open(index)
    sizes = {str(p.relative_to(index)): p.stat().st_size for p in Path(index).rglob("*") if p.is_file()}
    total = sum(sizes.values())
    n = max(len(engine), 1)
    features = sizes.get("features.glf", 0)
    stats = {
        "images": len(engine),
        "removed_images": len(engine.names) - len(engine),  # tombstoned until 'glocal index compact'
        "method": engine.manifest["method"],
        "shortlist": engine.shortlist.stats(),
        "features_bytes_per_image": features / n,
        "total_bytes": total,
        "total_bytes_per_image": total / n,
    }
    engine.close()
    if as_json:
        print(json.dumps(stats))
        return
    for k, v in stats.items():
        if isinstance(v, dict):
            for kk, vv in v.items():
                out.print(f"{'shortlist ' + kk:>32}: {vv:,.1f}" if isinstance(vv, float) else f"{'shortlist ' + kk:>32}: {vv}")
        else:
            out.print(f"{k:>32}: {v:,.1f}" if isinstance(v, float) else f"{k:>32}: {v}")


def _open(index: Path, writable: bool = False):
    from glocal.engine import Engine, IndexError_
    from glocal.index.manifest import IndexFormatError
    from glocal.io.feature_file import FeatureFileError

    try:
        return Engine.open(index, progress=show_progress(), writable=writable)
    except (IndexError_, FeatureFileError, IndexFormatError, OSError) as exc:
        err.print(f"[red]error[/red]: {escape(str(exc))}")
        raise typer.Exit(EXIT_INPUT) from None
