"""Feature extractors, one module per method, created by name through :func:`create_extractor`."""
from __future__ import annotations

from typing import Any

from glocal.models.sift import RootSiftExtractor, SiftConfig

AVAILABLE_METHODS = ("sift",)


def create_extractor(method: str, **conf: Any) -> RootSiftExtractor:
    """Create the extractor of ``method`` with its default configuration overridden by ``conf``."""
    if method == "sift":
        return RootSiftExtractor(SiftConfig(**conf))
    raise ValueError(f"unknown method {method!r}; available: {', '.join(AVAILABLE_METHODS)}")
