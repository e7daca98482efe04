"""``glocal index build|add|remove|compact|verify|info``: thin wrappers around :mod:`glocal.index`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from glocal.cli.common import (
    EXIT_PARTIAL,
    checkpoint_file,
    err,
    image_names,
    out,
    report_failures,
    show_progress,
)
from glocal.io.images import list_images

app = typer.Typer(help="Build, extend and inspect an index (a .glx folder).", no_args_is_help=True)


@app.command("build")
def build(
    paths: Optional[list[Path]] = typer.Argument(None, help="Image files and/or folders (searched recursively)."),
    out_path: Path = typer.Option(..., "--out", "-o", help="Index folder to create, e.g. my.glx."),
    features: Optional[Path] = typer.Option(
        None, "--features", help="Index a features folder written by 'glocal extract' instead of images."),
    method: Optional[str] = typer.Option(
        None, "--method", "-m", help="Method (default: the weight-free default); 'glocal methods' lists them."),
    codebook_images: Optional[Path] = typer.Option(
        None, "--codebook-images", help="Train the visual words on this folder instead of the indexed images."),
    codebook_size: Optional[int] = typer.Option(None, "--codebook-size", help="Number of visual words (ASMK methods)."),
    codebook_from: Optional[Path] = typer.Option(
        None, "--codebook-from", help="Reuse the codebook (and fast quantizer) of this index of the same method."),
    workers: int = typer.Option(2, "--workers", help="Parallel extraction threads."),
    checkpoint: Optional[str] = typer.Option(
        None, "--checkpoint", help="Model weights (deep methods): a file, or a published name ('glocal weights list')."),
    max_side: Optional[int] = typer.Option(None, "--max-side", help="Resize images so the longer side is at most this."),
    settings: list[str] = typer.Option(
        [], "--set", help="Option KEY=VALUE (VALUE as JSON, e.g. scales=[1.0]); 'glocal methods show METHOD' lists "
        "the keys; repeatable."),
    global_index: Optional[str] = typer.Option(
        None, "--global", help="Global methods: auto (default: exact, ivfpq from 800 MB of float32 vectors, e.g. 97,657 "
        "images of 2048-D), exact, or ivfpq (approximate, compact, for large collections)."),
    regions: Optional[str] = typer.Option(None, "--regions", help="Database regions: none, rmac or detector (ASMK methods)."),
    detector: Optional[Path] = typer.Option(None, "--detector", help="Landmark detector weights for --regions detector."),
    aggregation: Optional[str] = typer.Option(
        None, "--aggregation", help="asmk, r-asmk (with regions) or regions (regional search, max pooling)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Name on stderr each image that yielded no features."),
) -> None:
    """Extract features of every image (or take them from --features) and build a searchable index."""
    from glocal.errors import BadOptionError
    from glocal.index.builder import build_from_features, build_index
    from glocal.methods import default_method
    from glocal.methods.options import parse_set

    if bool(paths) == (features is not None):
        raise BadOptionError("give either images (files or folders) or --features FOLDER, not both or neither")

    conf = parse_set(settings)
    shortcuts = {"codebook_size": codebook_size, "max_side": max_side, "index": global_index, "regions": regions,
                 "detector": str(detector) if detector else None, "aggregation": aggregation}
    conf |= {k: v for k, v in shortcuts.items() if v is not None}
    if checkpoint is not None:
        conf["checkpoint"] = checkpoint_file(checkpoint, method or default_method())
    cb = list_images([codebook_images]) if codebook_images else None
    if features is not None:
        if method is not None or checkpoint is not None:
            raise BadOptionError("--method and --checkpoint come from the features folder with --features")
        result = build_from_features(features, out_path, settings=conf, codebook_paths=cb, codebook_from=codebook_from,
                                     progress=show_progress(), workers=workers)
    else:
        files = image_files(paths)
        result = build_index(files, image_names(files, paths), out_path, method=method, settings=conf,
                             codebook_paths=cb, codebook_from=codebook_from, progress=show_progress(),
                             workers=workers)
    collection = result.collection
    count = len(collection)
    notes = result.notes
    collection.close()
    for note in notes:
        err.print(f"[yellow]warning[/yellow]: {escape(note)}", highlight=False)
    report_failures(result.failures)
    report_no_features(result.no_features, verbose)
    out.print(f"indexed {count} images into {out_path} ({len(result.failures)} skipped, "
              f"{len(result.no_features)} with no features)")
    if result.failures:
        raise typer.Exit(EXIT_PARTIAL)


def image_files(paths: list[Path]) -> list[Path]:
    """The image files under ``paths``; :class:`BadInputError` when none exists or none holds an image."""
    from glocal.errors import BadInputError

    missing = [p for p in paths if not p.exists()]
    if len(missing) == len(paths):
        raise BadInputError(f"no such file or folder: {', '.join(map(str, missing))}")
    for p in missing:
        err.print(f"[yellow]skipped[/yellow] {escape(str(p))}: no such file or folder", highlight=False)
    skipped: list[tuple[Path, str]] = []
    files = list_images(paths, skipped)
    for p, why in skipped:
        err.print(f"[yellow]skipped[/yellow] {escape(str(p))}: {escape(why)}", highlight=False)
    if not files:
        raise BadInputError(f"no images found in {', '.join(map(str, paths))}")
    return files


def report_no_features(names: list[str], verbose: bool) -> None:
    """Images indexed without features (nothing can match them): named on stderr with ``--verbose``."""
    if not names:
        return
    if verbose:
        for n in names:
            err.print(f"[yellow]no features[/yellow]: {escape(n)} (indexed, but nothing can match it)", highlight=False)
    else:
        err.print(f"{len(names)} images yielded no features (indexed, but nothing can match them); "
                  "--verbose names them", highlight=False)


@app.command("add")
def add(
    index: Path = typer.Argument(..., help="Existing index folder."),
    paths: list[Path] = typer.Argument(..., help="Image files and/or folders to add."),
    workers: int = typer.Option(2, "--workers"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Name on stderr each image that yielded no features."),
) -> None:
    """Add images to an existing index (same method and codebook)."""
    from glocal.index.builder import add_images

    files = image_files(paths)
    empty: list[str] = []
    with _open(index, writable=True) as collection:
        before = len(collection)
        failures = add_images(collection, files, image_names(files, paths), progress=show_progress(), workers=workers,
                              no_features=empty)
        after = len(collection)
    report_failures(failures)
    report_no_features(empty, verbose)
    out.print(f"added {after - before} images ({len(empty)} with no features); the index now holds {after}")
    if failures:
        raise typer.Exit(EXIT_PARTIAL)


@app.command("remove")
def remove(
    index: Path = typer.Argument(..., help="Existing index folder."),
    names: list[str] = typer.Argument(..., help="Images to remove: the path you indexed (photos/old.jpg) or the "
                                      "name 'glocal search' prints (old.jpg)."),
) -> None:
    """Remove images from an index: never returned again, their entries stay on disk (tombstoned) until
    'glocal index compact'; a removed name can be added again with 'glocal index add'."""
    from glocal.index.names import resolve_names

    with _open(index, writable=True) as collection:
        match = resolve_names(collection.live_names().values(), collection.sources, names)
        targets = list(dict.fromkeys(match.found.values()))
        collection.remove(targets)
        left = len(collection)
    for text, near in match.missing.items():
        hint = f"; did you mean: {', '.join(near)}" if near else ""
        err.print(f"[yellow]not in the index[/yellow]: {escape(text)}{escape(hint)}", highlight=False, soft_wrap=True)
    for text, options in match.ambiguous.items():
        err.print(f"[yellow]not removed[/yellow]: {escape(text)} could be any of {escape(', '.join(options))}; "
                  "give the stored name", highlight=False, soft_wrap=True)
    out.print(f"removed {len(targets)} images; the index now holds {left}")
    if match.missing or match.ambiguous:
        raise typer.Exit(EXIT_PARTIAL)


@app.command("compact")
def compact(index: Path = typer.Argument(..., help="Existing index folder.")) -> None:
    """Rewrite an index without its removed images and give their disk space back (nothing is extracted again;
    surviving images keep their names and scores, their positions are renumbered). An ASMK index written by an
    older glocal is rewritten in the current posting layout on the way (the same scores, a faster scan)."""
    from glocal.index.compact import compact_index

    report = compact_index(index, progress=show_progress())
    mb = 1 / 2**20
    upgraded = (f"; {report.upgraded} posting segment{'s' * (report.upgraded != 1)} rewritten in the current "
                "layout" if report.upgraded else "")
    out.print(f"dropped {report.dropped} removed images, kept {report.kept}; "
              f"{report.bytes_before * mb:,.1f} MB -> {report.bytes_after * mb:,.1f} MB{upgraded}")


@app.command("verify")
def verify(
    index: Path = typer.Argument(..., help="Index folder."),
    repair: bool = typer.Option(False, "--repair", help="Drop the images of damaged segments (and damaged feature "
                                "records) from search and compact the index; other damage needs a rebuild."),
) -> None:
    """Check every checksum of every file of an index; one line per damaged part (exit 3 when damaged)."""
    from glocal.errors import DamagedIndexError
    from glocal.index.verify import repair_index, verify_index

    report = verify_index(index)
    for d in report.damage:
        out.print(f"damaged: {escape(d.line())}", highlight=False)
    if report.ok:
        out.print(f"{escape(str(index))}: {report.files_checked} files checked, no damage", highlight=False)
        return
    if not repair:
        raise DamagedIndexError(f"{index}: {len(report.damage)} damaged parts (see above); 'glocal index verify "
                                "--repair' drops the images of damaged segments, other damage needs a rebuild")
    fixed = repair_index(index, report)
    for d, why in fixed.unrepaired:
        err.print(f"cannot repair {escape(d.file)}: {escape(why)}", highlight=False)
    for n in fixed.dropped:
        out.print(f"dropped: {escape(n)}", highlight=False)
    if fixed.after is None or not fixed.after.ok:
        raise DamagedIndexError(f"{index}: damage remains after repair; rebuild the index")
    out.print(f"repaired: dropped {len(fixed.dropped)} images; {fixed.after.files_checked} files checked, no damage",
              highlight=False)


@app.command("info")
def info(index: Path = typer.Argument(..., help="Index folder."), as_json: bool = typer.Option(False, "--json")) -> None:
    """Images, visual words per image, bytes per image and total size."""
    import json

    with _open(index) as collection:
        stats = collection.info()
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
    from glocal.index.collection import Collection

    return Collection.open(index, progress=show_progress(), writable=writable)
