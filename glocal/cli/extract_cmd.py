"""``glocal extract IMAGES --out FEATURES/``: the extraction stage alone (feature shards, resumable); index
them later with ``glocal index build --features FEATURES/``."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from glocal.cli.common import EXIT_PARTIAL, checkpoint_file, image_names, out, report_failures, show_progress


def extract_command(
    paths: list[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Features folder to create (or to resume)."),
    method: Optional[str] = typer.Option(
        None, "--method", "-m", help="Method (default: the weight-free default); 'glocal methods' lists them."),
    checkpoint: Optional[str] = typer.Option(
        None, "--checkpoint", help="Model weights (deep methods): a file, or a published name."),
    max_side: Optional[int] = typer.Option(None, "--max-side", help="Resize images so the longer side is at most this."),
    settings: list[str] = typer.Option([], "--set", help="Option KEY=VALUE (extractor options; regions); repeatable."),
    shard_size: int = typer.Option(1000, "--shard-size", help="Images per shard (the unit of resumption)."),
    workers: int = typer.Option(
        2, "--workers", help="Parallel extraction threads; with --ray: Ray workers (shards extracted at once)."),
    ray: Optional[str] = typer.Option(
        None, "--ray", metavar="ADDRESS",
        help="Extract the shards on Ray: 'local' starts Ray here with --workers CPUs, else a cluster address "
             "(every node sees the images and --out at the same paths). Needs glocal[distributed]."),
    retries: int = typer.Option(2, "--retries", help="With --ray: attempts of a failed shard after the first."),
) -> None:
    """Extract features of every image into shards, without building an index. Running the same command
    again resumes an interrupted run: finished shards are kept."""
    from glocal.cli.index_cmd import image_files
    from glocal.extract.backends import extract_to_shards
    from glocal.methods import default_method, get
    from glocal.methods.options import parse_set
    from glocal.progress import as_progress

    spec = get(method or default_method())
    conf = parse_set(settings)
    if max_side is not None:
        conf["max_side"] = max_side
    if checkpoint is not None:
        conf["checkpoint"] = checkpoint_file(checkpoint, spec.name)
    options = spec.configure(conf)
    backend, threads = None, workers
    if ray is not None:
        from glocal.extract.ray_backend import RayBackend, import_ray

        import_ray()  # one line naming the extra before anything is read or written
        backend, threads = RayBackend(ray, workers, retries), 1  # one process per shard, one thread each
    files = image_files(paths)
    report = extract_to_shards(files, image_names(files, paths), out_dir, spec, options, backend=backend,
                               shard_size=shard_size, threads=threads, progress=as_progress(show_progress()))
    report_failures(report.failures)
    kept = f", {report.kept_shards} finished shards kept" if report.kept_shards else ""
    retried = f", {len(report.retried)} failed shard attempts run again" if report.retried else ""
    out.print(f"extracted {report.extracted} images into {report.written_shards} shards in {out_dir}{kept}{retried} "
              f"({len(report.failures)} skipped)")
    if report.failures:
        raise typer.Exit(EXIT_PARTIAL)
