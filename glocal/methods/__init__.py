"""The method registry: one :class:`~glocal.methods.spec.MethodSpec` per module of this package.

Every module here other than the machinery (``spec``, ``options``, ``stages``) declares ``SPECS``, a tuple
of the specs it defines; the registry finds them by listing the package, so adding a method is one new
file (plus its model code). A method's name is spelled only in its spec file.
"""
from __future__ import annotations

import importlib
import pkgutil

from glocal.errors import BadOptionError
from glocal.methods.spec import MethodOptions, MethodSpec, PublishedWeights

__all__ = ["MethodOptions", "MethodSpec", "PublishedWeights", "all_specs", "create_extractor", "default_method", "get",
           "names"]

_MACHINERY = {"spec", "options", "stages"}
_REGISTRY: dict[str, MethodSpec] = {}


def _load() -> dict[str, MethodSpec]:
    if not _REGISTRY:
        found: dict[str, MethodSpec] = {}
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            if info.name in _MACHINERY or info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{__name__}.{info.name}")
            for spec in getattr(module, "SPECS", ()):
                if spec.name in found:
                    raise RuntimeError(f"method {spec.name!r} declared twice ({module.__name__})")
                found[spec.name] = spec
        ordered = sorted(found.values(), key=lambda s: s.name)
        _REGISTRY.update((s.name, s) for s in ordered)
    return _REGISTRY


def all_specs() -> list[MethodSpec]:
    """Every registered method, the default first."""
    specs = list(_load().values())
    return sorted(specs, key=lambda s: (not s.default, s.name))


def names() -> list[str]:
    """The ``--method`` choices, the default first."""
    return [s.name for s in all_specs()]


def default_method() -> str:
    """The name of the weight-free default method."""
    return next(s.name for s in all_specs() if s.default)


def get(name: str) -> MethodSpec:
    """The spec of method ``name``; :class:`glocal.errors.BadOptionError` lists the known names."""
    try:
        return _load()[name]
    except KeyError:
        raise BadOptionError(f"unknown method {name!r}; known methods: {', '.join(names())}") from None


def create_extractor(name: str, **settings: object) -> object:
    """The extractor of method ``name`` with its extractor options ``settings`` (like ``timm.create_model``).

    :raises BadOptionError: unknown method, or a key that is not an extractor option of it.
    :raises glocal.errors.MissingDependencyError: the method needs an extra that is not installed.
    """
    from glocal.methods.options import with_values

    spec = get(name)
    return spec.create_extractor(with_values(spec.extractor, settings, f"{name} extractor options"))
