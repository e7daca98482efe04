"""Batch extraction over many image files: parallel, ordered, and tolerant of bad files."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from glocal.io.images import ImageReadError, LoadedImage, load_image
from glocal.records import ImageFeatures


class Extractor(Protocol):
    name: str
    max_side: int

    def extract(self, image: LoadedImage, name: str) -> ImageFeatures: ...


@dataclass(frozen=True)
class ExtractionFailure:
    """A file that could not be used, and why (the batch goes on without it)."""

    path: str
    name: str
    reason: str


def extract_one(extractor: Extractor, path: Path, name: str,
                box: tuple[float, float, float, float] | None = None) -> ImageFeatures:
    """Load ``path`` (cropped to ``box`` if given) at the extractor's max side and extract its features."""
    return extractor.extract(load_image(path, max_side=extractor.max_side, box=box), name)


def extract_many(
    extractor: Extractor,
    paths: Sequence[Path],
    names: Sequence[str],
    workers: int = 2,
    on_done: Callable[[int], None] | None = None,
) -> Iterator[ImageFeatures | ExtractionFailure]:
    """Extract every image in order; a bad file yields an :class:`ExtractionFailure` instead of raising.

    Threads are used because OpenCV and PyTorch release the GIL while they compute.
    """
    if len(paths) != len(names):
        raise ValueError(f"{len(paths)} paths but {len(names)} names")

    def work(i: int) -> ImageFeatures | ExtractionFailure:
        try:
            return extract_one(extractor, Path(paths[i]), names[i])
        except ImageReadError as exc:
            return ExtractionFailure(str(paths[i]), names[i], exc.reason)

    if workers <= 1:
        for i in range(len(paths)):
            yield work(i)
            if on_done:
                on_done(1)
        return
    with ThreadPoolExecutor(workers) as pool:
        window = workers * 4
        futures = [pool.submit(work, i) for i in range(min(window, len(paths)))]
        nxt = len(futures)
        for fut in futures_in_order(futures):
            if nxt < len(paths):
                futures.append(pool.submit(work, nxt))
                nxt += 1
            yield fut.result()
            if on_done:
                on_done(1)


def futures_in_order(futures: list) -> Iterator:
    """Iterate over a list that may grow while iterating (a bounded submission window)."""
    i = 0
    while i < len(futures):
        yield futures[i]
        futures[i] = None  # release the result once consumed
        i += 1
