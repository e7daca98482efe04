"""The extraction stage: image files -> feature records, committed in batches to a sink.

:func:`create_extractors` makes a method's query and database extractors from its spec and typed options
(the database one also finds regions when the index uses them); :func:`extract_into` runs an extractor over
files (in parallel threads: OpenCV and PyTorch release the GIL), skips names already taken, reports every
bad file as an :class:`~glocal.extract.batch.ExtractionFailure` and goes on, and hands committed batches to
a sink (a feature file, a collection).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from glocal.extract.batch import ExtractionFailure, extract_many
from glocal.methods.spec import MethodOptions, MethodSpec
from glocal.progress import Progress
from glocal.records import ImageFeatures

#: images committed per batch
COMMIT_BATCH = 16

#: receives a batch of new features and the file each came from
Sink = Callable[[list[ImageFeatures], list[tuple[str, Path]]], None]


def create_extractors(spec: MethodSpec, options: MethodOptions) -> tuple[Any, Any]:
    """(query extractor, database extractor) of ``spec`` with ``options``; the database one also sets regions
    when ``options.index`` asks for them (Detect-to-Retrieve)."""
    extractor = spec.create_extractor(options.extractor)
    return extractor, with_regions(extractor, options)


def with_regions(extractor: Any, options: MethodOptions) -> Any:
    """``extractor`` for database images: wrapped to also find regions when ``options.index`` uses them."""
    regions = getattr(options.index, "regions", "none")
    if regions == "none":
        return extractor
    from glocal.models.geometry.regions import RegionExtractor, region_source

    overrides = {"checkpoint": options.index.detector} if regions == "detector" and options.index.detector else {}
    return RegionExtractor(extractor, region_source(regions, **overrides))


def skip_repeated(paths: Sequence[Path], names: Sequence[str], taken: set[str] | None, reason: str
                  ) -> tuple[list[Path], list[str], list[ExtractionFailure]]:
    """(paths, names) without the names in ``taken`` or seen earlier in ``names``, and a failure with
    ``reason`` for each one skipped."""
    failures: list[ExtractionFailure] = []
    fresh_paths, fresh_names = [], []
    seen = set(taken or ())
    for p, n in zip(paths, names):
        if n in seen:
            failures.append(ExtractionFailure(str(p), n, reason))
        else:
            seen.add(n)
            fresh_paths.append(Path(p))
            fresh_names.append(n)
    return fresh_paths, fresh_names, failures


def extract_into(sink: Sink, extractor: Any, paths: Sequence[Path], names: Sequence[str], progress: Progress,
                 description: str, workers: int, taken: set[str] | None = None) -> list[ExtractionFailure]:
    """Extract ``paths`` (named ``names``) and commit them to ``sink`` in batches; returns the failures.

    Names in ``taken`` or repeated in ``names`` are skipped and reported, not extracted twice.
    """
    fresh_paths, fresh_names, failures = skip_repeated(paths, names, taken, "already in the index (skipped)")
    path_of = dict(zip(fresh_names, fresh_paths))
    batch: list[ImageFeatures] = []
    advance = progress(description, len(fresh_paths))
    for item in extract_many(extractor, fresh_paths, fresh_names, workers=workers, on_done=advance):
        if isinstance(item, ExtractionFailure):
            failures.append(item)
            continue
        batch.append(item)
        if len(batch) >= COMMIT_BATCH:
            sink(batch, [(f.name, path_of[f.name]) for f in batch])
            batch = []
    if batch:
        sink(batch, [(f.name, path_of[f.name]) for f in batch])
    return failures
