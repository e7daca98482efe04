"""``glocal whiten``: fit HOW/FIRe's frozen PCA-whitening o(.) on local features and save the model."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from glocal.cli.common import EXIT_INPUT, checkpoint_file, err, out, show_progress


def whiten_command(
    images: list[Path] = typer.Argument(..., help="Images (files or folders) to learn the whitening from."),
    out_path: Path = typer.Option(..., "--out", "-o", help="Checkpoint to write (glocal format)."),
    method: str = typer.Option("how", "--method", help="how or fire."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="Model weights to start from (file or published name)."),
    features_per_image: int = typer.Option(1000, "--features-per-image"),
    max_images: int = typer.Option(5000, "--max-images", help="Reference setting: 5,000 training images."),
) -> None:
    """Learn the PCA-whitening to 128-D from the top local features of each image (scale 1), as HOW/FIRe."""
    from glocal.io.images import ImageReadError, list_images, load_image
    from glocal.models import create_extractor
    from glocal.models.how import fit_whitening
    from glocal.progress import as_progress

    if method not in ("how", "fire"):
        raise typer.BadParameter("whitening is learned for 'how' or 'fire'", param_hint="--method")
    conf = {"checkpoint": checkpoint_file(checkpoint, method)} if checkpoint else {}
    extractor = create_extractor(method, **conf)
    files = list_images(images)[:max_images]
    if not files:
        err.print("no images found")
        raise typer.Exit(EXIT_INPUT)
    advance = as_progress(show_progress())("whitening sample", len(files))

    def loaded():
        for p in files:
            try:
                yield load_image(p, max_side=extractor.max_side)
            except ImageReadError as exc:
                err.print(f"[yellow]skipped[/yellow] {exc}", highlight=False)
            advance(1)

    fit_whitening(extractor, loaded(), features_per_image=features_per_image, scales=(1.0,))
    path = extractor.save_checkpoint(out_path)
    out.print(f"whitening learned from {len(files)} images; model written to {path}")
