"""The detector regime's images, read per batch (:mod:`glocal.train.batches`): a box file of 58k images (the
Google Landmark Boxes) never sits in memory.

:func:`read_box_data` reads the box file and every image's *header* only (:func:`~glocal.train.batches.image_headers`,
on ``workers`` threads): it keeps, per readable image, its id, file, stored size and boxes as the file gives them
(pixels of the image as glocal loads it, EXIF-rotated, or normalised), never pixels. :class:`BoxImages` decodes an
image when a batch (or the evaluation hook) asks for it, at longer side ``max_side`` (``workers`` threads, at
most ``cache_images`` kept; :class:`~glocal.train.batches.ImageLoader`), and scales its boxes to the decoded
pixels. A file whose body turns out corrupt, or that goes away during the run, is reported once, recorded in
the run's ``skipped`` (checkpoints, the model card's ``skipped_files``) and left out: of its batch
(:class:`StreamedBoxDataset` gives ``None`` for it) and of the evaluation.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from glocal.errors import BadInputError
from glocal.io.images import load_image
from glocal.train.batches import DEFAULT_CACHE_IMAGES, DEFAULT_WORKERS, ImageLoader, image_headers
from glocal.train.detector_data import AugmentConfig, BoxAnnotation, DetectorBoxDataset, find_image, read_boxes

#: images decoded ahead of the one being evaluated
EVAL_AHEAD = 4


@dataclass
class BoxData:
    """The readable images of a box file (no pixels) and the files left out.

    ``sizes``: (height, width) as stored in each file's header (before any EXIF rotation); ``annotations``:
    boxes as the box file gives them (pixels of the EXIF-rotated original, or normalised to [0, 1]).
    """

    source: str
    ids: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    annotations: list[BoxAnnotation] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    singletons: list[str] = field(default_factory=list)  # no classes here; the CLI's report reads it

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "images": len(self.ids),
                "boxes": int(sum(len(a.boxes) for a in self.annotations)), "skipped": len(self.problems)}


def read_box_data(data: str | Path, images: str | Path | None, workers: int = DEFAULT_WORKERS) -> BoxData:
    """The images of the box file ``data`` whose file exists and whose header reads (nothing is decoded)."""
    annotations = read_boxes(data)
    root = Path(images) if images is not None else Path(data).parent
    out = BoxData(str(data))
    found: list[tuple[BoxAnnotation, Path]] = []
    for ann in annotations:
        path = find_image(root, ann.image_id)
        if path is None:
            out.problems.append((str(root / ann.image_id), "missing (no such file, with or without .jpg / .jpeg / "
                                                           ".png, nor in the a/b/c/ tree)"))
        else:
            found.append((ann, path))
    for (ann, path), header in zip(found, image_headers([p for _, p in found], workers)):
        if isinstance(header, str):
            out.problems.append((str(path), header))
            continue
        out.ids.append(ann.image_id)
        out.paths.append(str(path))
        out.sizes.append(header)
        out.annotations.append(ann)
    if not out.ids:
        raise BadInputError(f"{data}: none of its {len(annotations)} images could be read (under {root}; "
                            "--images names the folder)")
    return out


class BoxImages(ImageLoader):
    """The images ``rows`` of ``data`` decoded on demand at longer side ``max_side``, with their boxes in the
    decoded pixels (:class:`~glocal.train.batches.ImageLoader`'s other arguments); iterating gives every image's
    ``(pixels, boxes)`` in order, or ``None`` for one found unreadable, decoding a few ahead."""

    def __init__(self, data: BoxData, rows: Sequence[int], max_side: int, cache_images: int = DEFAULT_CACHE_IMAGES,
                 workers: int = DEFAULT_WORKERS, say: Callable[[str], None] | None = None,
                 skipped: dict[str, str] | None = None) -> None:
        super().__init__([data.paths[i] for i in rows], max_side, cache_images, workers, say, skipped)
        self.annotations = [data.annotations[i] for i in rows]
        self._original: dict[int, tuple[int, int]] = {}  # (height, width) after EXIF rotation, once decoded

    def _read(self, i: int) -> np.ndarray:
        image = load_image(self.files[i], max_side=self.max_side)
        self._original[i] = image.original_size
        return image.pixels

    def sample(self, i: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]] | None:
        """(pixels, boxes (K, 4) in those pixels) of image ``i``; None when it is unreadable."""
        return self._scaled(i, self.get(i))

    def _scaled(self, i: int, pixels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
        if pixels is None:
            return None
        h0, w0 = self._original[i]
        h, w = pixels.shape[:2]
        boxes = self.annotations[i].pixel_boxes(w0, h0) * np.array([w / w0, h / h0, w / w0, h / h0], np.float32)
        return pixels, boxes.astype(np.float32)

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray] | None]:
        for i, pixels in self.stream(range(len(self.files)), ahead=EVAL_AHEAD):
            yield self._scaled(i, pixels)


class StreamedBoxDataset(DetectorBoxDataset):
    """:class:`~glocal.train.detector_data.DetectorBoxDataset` over :class:`BoxImages`: ``dataset[i]`` is
    ``None`` for an image found unreadable; :meth:`prefetch` starts decoding the next rows."""

    def __init__(self, images: BoxImages, augment: AugmentConfig | None, seed: int) -> None:
        super().__init__(images.annotations, _by_index_only, augment, seed)
        self.images = images
        self.skipped = images.skipped

    def sample(self, index: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]] | None:
        return self.images.sample(index)

    def prefetch(self, indices: Sequence[int]) -> None:
        self.images.prefetch(indices)


def _by_index_only(image_id: str) -> npt.NDArray[np.uint8]:
    raise TypeError(f"detector_images.py: image {image_id!r} is read by index (StreamedBoxDataset.sample)")
