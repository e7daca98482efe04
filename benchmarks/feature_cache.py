"""A per-image feature cache for benchmarks: extract an image once per extractor setting, whatever method,
index or candidate asks for it again.

    import feature_cache; feature_cache.install(cache_dir)   # every extractor a spec creates is cached

The key of a record is the extractor's class and config (``dataclasses.asdict``) and the *pixels* it is given
(bytes, shape, load scale, offset, original size), so two methods share an entry exactly when they would
compute the same features: ``gem`` and ``gem-aliked``'s GeM stage on the same 1024 px image; ``aliked`` at
640 px and ``gem-aliked``'s ALIKED stage (the mini sets' originals are at most 1024 px, so the loader's
640 px image and ``gem-aliked``'s shrunk copy are the same PIL resize of the same pixels). A composite
extractor (``global_part`` / ``local_part``) has each part cached on its own.

Query timing must not read the cache: :data:`ENABLED` is switched off around timed query extraction
(:func:`disabled`). Records are ``.npz`` files (``allow_pickle=False``) under ``<cache>/features/``; this is a
benchmark shortcut outside the library (never inside the repository).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from glocal.records import ImageFeatures

ENABLED = True
STATS = {"hits": 0, "misses": 0}
_ARRAYS = ("descriptors", "keypoints", "scales", "strengths", "global_descriptor", "regions", "orientations")


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Extract for real inside the block (timed queries)."""
    global ENABLED
    before, ENABLED = ENABLED, False
    try:
        yield
    finally:
        ENABLED = before


def _config_key(extractor: Any) -> str:
    config = getattr(extractor, "config", None)
    data = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else repr(config)
    return json.dumps([type(extractor).__name__, data], sort_keys=True, default=str)


class CachedExtractor:
    """``extract`` of ``inner`` read from / written to ``root`` (module docstring); everything else reads through."""

    def __init__(self, inner: Any, root: Path) -> None:
        self.inner, self.root = inner, Path(root)
        self._config = _config_key(inner)
        self._folder = self.root / hashlib.sha1(self._config.encode()).hexdigest()[:12]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _path(self, image: Any) -> Path:
        h = hashlib.sha1(self._config.encode())
        h.update(np.ascontiguousarray(image.pixels).tobytes())
        h.update(json.dumps([image.pixels.shape, image.scale, image.offset, image.original_size]).encode())
        return self._folder / f"{h.hexdigest()}.npz"

    def extract(self, image: Any, name: str) -> ImageFeatures:
        if not ENABLED:
            return self.inner.extract(image, name)
        path = self._path(image)
        if path.is_file():
            with np.load(path, allow_pickle=False) as d:
                STATS["hits"] += 1
                return ImageFeatures(name=name, image_size=tuple(int(v) for v in d["image_size"]),
                                     **{k: d[k] for k in _ARRAYS if k in d.files})
        STATS["misses"] += 1
        feats = self.inner.extract(image, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {k: getattr(feats, k) for k in _ARRAYS if getattr(feats, k) is not None}
        tmp = path.with_suffix(f".tmp{id(self)}")
        with open(tmp, "wb") as fh:
            np.savez(fh, image_size=np.asarray(feats.image_size), **arrays)
        tmp.replace(path)
        return feats


def wrap(extractor: Any, root: Path) -> Any:
    """``extractor`` with its parts (``global_part``, ``local_part``) or itself cached."""
    parts = [a for a in ("global_part", "local_part") if hasattr(extractor, a)]
    if not parts:
        return CachedExtractor(extractor, root)
    for a in parts:
        setattr(extractor, a, CachedExtractor(getattr(extractor, a), root))
    return extractor


def install(cache: Path) -> None:
    """Cache every extractor :meth:`glocal.methods.spec.MethodSpec.create_extractor` makes from now on."""
    from glocal.methods.spec import MethodSpec

    if getattr(MethodSpec.create_extractor, "_cached", False):
        return
    original = MethodSpec.create_extractor
    root = Path(cache) / "features"

    def create_extractor(self: MethodSpec, options: Any | None = None) -> Any:
        return wrap(original(self, options), root)

    create_extractor._cached = True  # type: ignore[attr-defined]
    MethodSpec.create_extractor = create_extractor  # type: ignore[method-assign]
