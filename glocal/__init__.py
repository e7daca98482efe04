"""glocal: landmark and instance-level image retrieval with global and local features.

The library's entry points, importable from here (loaded on first use)::

    from glocal import build_index, Searcher

    build_index(paths, names, "my.glx", method="sift", settings={"ratio": 0.8}).collection.close()
    with Searcher.open("my.glx") as searcher:
        hits = searcher.search("query.jpg", top=10)

``build_index`` / ``add_images`` (:mod:`glocal.index.builder`), ``Collection`` (the index folder,
:mod:`glocal.index.collection`), ``Searcher`` (:mod:`glocal.search`), ``create_extractor`` and the method
registry ``methods`` (:mod:`glocal.methods`). ``docs/ARCHITECTURE.md`` shows how they fit.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {"build_index": "glocal.index.builder", "add_images": "glocal.index.builder",
            "build_from_features": "glocal.index.builder", "Collection": "glocal.index.collection",
            "Searcher": "glocal.search", "create_extractor": "glocal.methods"}
__all__ = ["__version__", "methods", *_EXPORTS]


def __getattr__(name: str) -> Any:
    import importlib

    if name == "methods":
        return importlib.import_module("glocal.methods")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'glocal' has no attribute {name!r}")
