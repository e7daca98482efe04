"""Feature extractors, one module per method, created by name through :func:`create_extractor`."""
from __future__ import annotations

from typing import Any

from glocal.models.sift import RootSiftExtractor, SiftConfig

AVAILABLE_METHODS = ("sift", "delg", "delg-star", "dolg", "how", "fire", "vitgal")


class MissingDependencyError(ImportError):
    """A method needs an optional dependency (PyTorch for the deep models) that is not installed."""


def _require_torch(method: str) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            f"method {method!r} needs PyTorch, which is not installed: pip install 'glocal[deep]'"
        ) from None


def create_extractor(method: str, **conf: Any) -> Any:
    """Create the extractor of ``method`` with its default configuration overridden by ``conf``.

    The deep methods import torch lazily (``pip install glocal[deep]``): ``delg`` (global + 128-D local),
    ``delg-star`` (DELG with descriptors binarised to 16 bytes; ``binarize`` is forced on) and ``dolg``
    (global only), ``how`` (R50- activations, PCA-whitened to 128-D) and ``fire`` (LIT Super-features), ``vitgal`` (XCiT + multi-atrous + class attention, global + local).
    """
    if method == "sift":
        return RootSiftExtractor(SiftConfig(**conf))
    if method in AVAILABLE_METHODS:
        _require_torch(method)
    if method in ("delg", "delg-star"):
        from glocal.models.delg import DelgConfig, DelgExtractor

        conf = dict(conf)
        if method == "delg-star":
            conf["binarize"] = True
        return DelgExtractor(DelgConfig(**conf))
    if method == "dolg":
        from glocal.models.dolg import DolgConfig, DolgExtractor

        return DolgExtractor(DolgConfig(**conf))
    if method == "how":
        from glocal.models.how import HowConfig, HowExtractor

        return HowExtractor(HowConfig(**conf))
    if method == "fire":
        from glocal.models.fire import FireConfig, FireExtractor

        return FireExtractor(FireConfig(**conf))
    if method == "vitgal":
        from glocal.models.vitgal import VitgalConfig, VitgalExtractor

        return VitgalExtractor(VitgalConfig(**conf))
    raise ValueError(f"unknown method {method!r}; available: {', '.join(AVAILABLE_METHODS)}")
