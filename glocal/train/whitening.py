"""Learning a method's PCA-whitening from images, then saving it.

Two kinds, chosen by what the extractor offers (never by the method's name):

- a global-descriptor extractor with ``fit_whitening(images, dim=...)`` and ``save_whitening(path)``
  (e.g. GeM, :mod:`glocal.models.gem`): the unsupervised PCA-whitening of one descriptor per image, written
  as its own file (the extractor's ``whitening`` option takes it);
- otherwise HOW / FIRe: the top local features of each image at scale 1 (Tolias et al., ECCV 2020,
  section 3), the whitening set inside the model and the whole model saved (``extractor.save_checkpoint``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from glocal.errors import BadInputError
from glocal.io.images import ImageReadError, LoadedImage, load_image
from glocal.progress import Progress, no_progress


def learns_global_whitening(extractor: Any) -> bool:
    """The extractor fits and saves a whitening of its global descriptor itself."""
    return callable(getattr(extractor, "fit_whitening", None)) and callable(getattr(extractor, "save_whitening", None))


def learn_whitening(extractor: Any, files: Sequence[Path], out: Path, features_per_image: int = 1000,
                    progress: Progress = no_progress, on_skip: Callable[[ImageReadError], None] | None = None,
                    dim: int | None = None) -> Path:
    """Fit ``extractor``'s whitening on ``files`` (unreadable ones skipped and reported through ``on_skip``) and
    write it to ``out``: the whitening file of a global extractor, else the model with it. ``dim`` (global
    extractors only) is the whitened dimension (None: the extractor's default); ``features_per_image`` is for
    local features only. Returns the file written."""
    if not files:
        raise BadInputError("no images to learn the whitening from")
    global_kind = learns_global_whitening(extractor)
    if dim is not None and not global_kind:
        raise BadInputError("--dim is for the whitening of a global descriptor; this method's local whitening "
                            "has the dimension of its output_dim option")
    advance = progress("whitening sample", len(files))

    def loaded() -> Iterator[LoadedImage]:
        for p in files:
            try:
                yield load_image(p, max_side=extractor.max_side)
            except ImageReadError as exc:
                if on_skip is not None:
                    on_skip(exc)
            advance(1)

    if global_kind:
        extractor.fit_whitening(loaded(), dim=dim)
        return Path(extractor.save_whitening(out))

    from glocal.models.how import fit_whitening

    fit_whitening(extractor, loaded(), features_per_image=features_per_image, scales=(1.0,))
    return Path(extractor.save_checkpoint(out))
