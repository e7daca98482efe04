"""``glocal whiten``: fit a method's PCA-whitening and save it: HOW/FIRe's frozen o(.) on local features (the
model is saved), or the unsupervised whitening of a global descriptor (a whitening file, e.g. for GeM's
``--set whitening=FILE``)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from glocal.cli.common import checkpoint_file, err, out, show_progress


def whiten_command(
    images: list[Path] = typer.Argument(..., help="Images (files or folders) to learn the whitening from."),
    out_path: Path = typer.Option(..., "--out", "-o", help="File to write: the model (glocal format) "
                                   "for local-feature whitening, an .npz whitening for a global descriptor."),
    method: Optional[str] = typer.Option(
        None, "--method", help="A method whose whitening is learned (see 'glocal methods'; default: the first)."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="Model weights to start from (file or published name)."),
    features_per_image: int = typer.Option(1000, "--features-per-image", help="Local features per image (HOW/FIRe)."),
    dim: Optional[int] = typer.Option(
        None, "--dim", help="Whitened dimension of a global descriptor (default: min(D, images - 1))."),
    max_images: int = typer.Option(5000, "--max-images", help="Reference setting: 5,000 training images."),
) -> None:
    """Learn a PCA-whitening without labels: HOW/FIRe's to 128-D from the top local features of each image
    (scale 1), or a global descriptor's (one per image; see the method's docs)."""
    from glocal.errors import BadOptionError
    from glocal.io.images import list_images
    from glocal.methods import all_specs, create_extractor, get
    from glocal.progress import as_progress

    learners = [s.name for s in all_specs() if "whitening" in s.capabilities]
    method = method or learners[0]
    if method not in learners:
        raise BadOptionError(f"--method {method}: whitening is learned for {', '.join(learners)}")
    get(method).check_installed()  # the missing extra in one line, before the training code imports it
    from glocal.train.whitening import learn_whitening
    conf = {"checkpoint": checkpoint_file(checkpoint, method)} if checkpoint else {}
    extractor = create_extractor(method, **conf)
    files = list_images(images)[:max_images]
    path = learn_whitening(extractor, files, out_path, features_per_image=features_per_image,
                           progress=as_progress(show_progress()), dim=dim,
                           on_skip=lambda exc: err.print(f"[yellow]skipped[/yellow] {exc}", highlight=False))
    out.print(f"whitening learned from {len(files)} images; written to {path}")
