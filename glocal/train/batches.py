"""Training images loaded lazily, per batch, for every regime of ``glocal train`` (tuples, classification, and the
detector's, :mod:`glocal.train.detector_images`): a set of millions of images (Google Landmarks v2) never sits in
memory.

* The readability pass before training (:func:`readable`) reads every file's *header* only (PIL's
  ``Image.open`` and the size, without ``load``, on ``workers`` threads):
  missing files, non-images and images over the pixel limit are left out and listed; the pixels are not
  decoded. A file whose header is fine but whose body is corrupt, or one that goes away or breaks during the
  run, is found when first decoded: :class:`ImageLoader` reports it once (one line ``skipped PATH: REASON``
  through ``say``), records it in :attr:`ImageLoader.skipped` (saved in checkpoints; the model card's
  ``skipped_files`` lists it) and returns ``None`` for it from then on; the regimes drop such an image from its
  batch (a tuple whose query or positive it is is dropped, as a negative it is left out of its tuple; in
  mining and evaluation its descriptor is a zero row; the detector leaves it out of its batch and of the
  evaluation).
* Decoding runs on ``workers`` threads (0: in the calling thread): PIL decodes and resizes with the GIL
  released, the decoded pixels stay in this process and the skip bookkeeping in one place, so threads are
  used rather than worker processes. The regime asks for the next batch ahead (:meth:`ImageLoader.prefetch`)
  while it trains on the current one. Pixels do not depend on the thread that decoded them and the order of
  the images comes from the regime's seeded sampler alone, so the weights do not depend on ``workers`` or
  on the cache, and exact resume still holds.
* At most ``cache_images`` decoded images are kept (least recently used first out); 0 keeps none.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from glocal.io.images import MAX_PIXELS, ImageReadError, load_image
from glocal.models.geometry.pyramid import image_to_tensor, preprocessing_by_name
from glocal.train.data import TrainingSet

#: decoded images kept by default (about 300 MB at a 512-pixel longest side)
DEFAULT_CACHE_IMAGES = 512
#: decoding threads by default
DEFAULT_WORKERS = 2

K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    """A dictionary holding at most ``size`` entries, the least recently used evicted first (0: holds none)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        if self.size <= 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def image_header(path: str | Path) -> tuple[int, int] | str:
    """(height, width) of ``path`` as stored (before any EXIF rotation), from its header alone, or why it
    cannot be a training image."""
    try:
        with Image.open(path) as img:  # parses the header; no pixel (nor PNG's trailing EXIF) is read
            w, h = img.size
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError, SyntaxError) as exc:
        return f"cannot read image header ({exc.__class__.__name__}: {exc})"
    if h * w > MAX_PIXELS:
        return f"image is {w}x{h} = {h * w} pixels, over the limit of {MAX_PIXELS}"
    return h, w


def image_headers(files: Sequence[str | Path], workers: int = DEFAULT_WORKERS) -> list[tuple[int, int] | str]:
    """:func:`image_header` of every file, on ``workers`` threads; nothing is decoded."""
    if workers > 0 and len(files) > 1:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(image_header, files, chunksize=64))
    return [image_header(f) for f in files]


def readable(data: TrainingSet, workers: int = DEFAULT_WORKERS) -> TrainingSet:
    """``data`` without the images whose header cannot be read (added to its problems); nothing is decoded."""
    files = list(data.files)
    reasons = [r if isinstance(r, str) else None for r in image_headers(files, workers)]
    bad = [(str(f), r) for f, r in zip(files, reasons) if r is not None]
    if not bad:
        return data
    clean = data.subset([i for i, r in enumerate(reasons) if r is None])
    clean.problems = data.problems + bad
    return clean


class ImageLoader:
    """Decoded pixels (longest side ``max_side``) of ``files`` by index, loaded on demand (module docstring).

    :param skipped: path -> reason of the files found unreadable during the run, shared by the run's loaders
        (training and held-out images) and saved in its checkpoints: a file in it is skipped without a new
        report, a newly found one is added and reported once.
    :param say: where the one-line report of a newly unreadable file goes (None: nowhere).
    """

    def __init__(self, files: Sequence[Path], max_side: int, cache_images: int = DEFAULT_CACHE_IMAGES,
                 workers: int = DEFAULT_WORKERS, say: Callable[[str], None] | None = None,
                 skipped: dict[str, str] | None = None) -> None:
        self.files, self.max_side, self.say = [str(f) for f in files], max_side, say
        self.cache: Lru[int, np.ndarray] = Lru(cache_images)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="glocal-images") if workers > 0 else None
        self._pending: dict[int, Future] = {}
        self.skipped = skipped if skipped is not None else {}

    def _read(self, i: int) -> np.ndarray:
        """The pixels of image ``i`` (a subclass may note more of the :class:`~glocal.io.images.LoadedImage`)."""
        return load_image(self.files[i], max_side=self.max_side).pixels

    def _decode(self, i: int) -> np.ndarray | str:
        try:
            return self._read(i)
        except ImageReadError as exc:
            return exc.reason
        except (OSError, ValueError, MemoryError) as exc:  # anything PIL lets out is a bad file, not a crash
            return f"unreadable ({exc.__class__.__name__}: {exc})"

    def prefetch(self, indices: Iterable[int]) -> None:
        """Start decoding ``indices`` on the threads (no effect without threads or for cached / bad ones)."""
        if self._pool is None:
            return
        for i in indices:
            i = int(i)
            if i not in self._pending and self.files[i] not in self.skipped and self.cache.get(i) is None:
                self._pending[i] = self._pool.submit(self._decode, i)

    def discard(self, indices: Iterable[int]) -> None:
        """Forget the decodes started for ``indices`` (asked ahead but not needed after all)."""
        for i in indices:
            future = self._pending.pop(int(i), None)
            if future is not None:
                future.cancel()

    def get(self, i: int) -> np.ndarray | None:
        """The pixels of image ``i``; None when it is unreadable (reported the first time)."""
        i = int(i)
        if self.files[i] in self.skipped:
            return None
        pixels = self.cache.get(i)
        if pixels is not None:
            return pixels
        future = self._pending.pop(i, None)
        got = future.result() if future is not None else self._decode(i)
        if isinstance(got, str):
            self.skipped[self.files[i]] = got
            if self.say is not None:
                self.say(f"skipped {self.files[i]}: {got}")
            return None
        self.cache.put(i, got)
        return got

    def many(self, indices: Sequence[int]) -> list[np.ndarray | None]:
        """:meth:`get` of each index, decoded in parallel."""
        self.prefetch(indices)
        return [self.get(i) for i in indices]

    def stream(self, indices: Sequence[int], ahead: int = 16) -> Iterator[tuple[int, np.ndarray | None]]:
        """``(index, pixels or None)`` in order, decoding up to ``ahead`` images in advance."""
        indices = [int(i) for i in indices]
        self.prefetch(indices[:ahead])
        for k, i in enumerate(indices):
            self.prefetch(indices[k + ahead:k + ahead + 1])
            yield i, self.get(i)

    def close(self) -> None:
        """Stop the threads (pending decodes are dropped)."""
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> ImageLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def with_skipped(problems: Sequence[tuple[str, str]], skipped: dict[str, str]) -> list[tuple[str, str]]:
    """``problems`` and then the files found unreadable during the run, each file once."""
    seen = {p for p, _ in problems}
    return list(problems) + [(p, r) for p, r in skipped.items() if p not in seen]


class SquareBatches:
    """The classification regime's batches: images resized to ``size`` x ``size`` (B, 3, S, S) on ``device``,
    and for a frozen CNN backbone its maps per image, kept in a cache of the loader's size (recomputed when
    evicted: each image's maps are computed alone, so they do not depend on the cache)."""

    def __init__(self, loader: ImageLoader, preprocessing: str, size: int, device: torch.device,
                 channels_last: bool = False) -> None:
        self.loader, self.size, self.device, self.channels_last = loader, size, device, channels_last
        self.prep = preprocessing_by_name(preprocessing)
        self._maps: Lru[int, dict[str, Tensor]] = Lru(loader.cache.size)
        self._batch: dict[int, np.ndarray] = {}

    def take(self, ids: Sequence[int], with_cached_maps: bool = False) -> list[int]:
        """The readable images of a batch, their pixels decoded now (not those whose maps are cached)."""
        need = [i for i in ids if not (with_cached_maps and self._maps.get(i) is not None)]
        self.loader.discard(set(ids) - set(need))
        got = dict(zip(need, self.loader.many(need)))
        self._batch = {i: p for i, p in got.items() if p is not None}
        return [i for i in ids if got.get(i, True) is not None]

    def pixels(self, i: int) -> np.ndarray:
        p = self._batch.get(i)
        p = p if p is not None else self.loader.get(i)
        if p is None:
            raise ImageReadError(self.loader.files[i], self.loader.skipped[self.loader.files[i]])
        return p

    def tensor(self, ids: Sequence[int]) -> Tensor:
        xs = [F.interpolate(image_to_tensor(self.pixels(i), self.prep, self.device), size=(self.size, self.size),
                            mode="bilinear", align_corners=False) for i in ids]
        x = torch.cat(xs)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def maps(self, ids: Sequence[int], compute: Callable[[Tensor], dict[str, Tensor]]) -> dict[str, Tensor]:
        """``compute`` (the frozen backbone, no gradient) of each image alone, cached."""
        got = {}
        for i in ids:
            m = self._maps.get(i)
            if m is None:
                with torch.no_grad():
                    m = {k: v.float() for k, v in compute(self.tensor([i])).items()}
                self._maps.put(i, m)
            got[i] = m
        return {k: torch.cat([got[i][k] for i in ids]) for k in got[ids[0]]}
