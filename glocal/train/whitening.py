"""Learning a method's PCA-whitening from images (HOW / FIRe: the top local features of each image at scale 1,
Tolias et al., ECCV 2020, section 3), then saving the model with it."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from glocal.errors import BadInputError
from glocal.io.images import ImageReadError, LoadedImage, load_image
from glocal.progress import Progress, no_progress


def learn_whitening(extractor: Any, files: Sequence[Path], out: Path, features_per_image: int = 1000,
                    progress: Progress = no_progress, on_skip: Callable[[ImageReadError], None] | None = None) -> Path:
    """Fit ``extractor``'s whitening on ``files`` (unreadable ones skipped and reported through ``on_skip``) and
    write the model with it to ``out``; returns the file written."""
    from glocal.models.how import fit_whitening

    if not files:
        raise BadInputError("no images to learn the whitening from")
    advance = progress("whitening sample", len(files))

    def loaded() -> Iterator[LoadedImage]:
        for p in files:
            try:
                yield load_image(p, max_side=extractor.max_side)
            except ImageReadError as exc:
                if on_skip is not None:
                    on_skip(exc)
            advance(1)

    fit_whitening(extractor, loaded(), features_per_image=features_per_image, scales=(1.0,))
    return Path(extractor.save_checkpoint(out))
