"""The published-weights table, derived from the method registry: each spec's ``weights`` with its method.

Nothing is listed here: a method publishes checkpoints by naming them in its spec file
(:attr:`glocal.methods.MethodSpec.weights`); :data:`REGISTRY` maps every such name to a
:class:`MethodWeights` ``(method, weights)`` and is read anew from the registry on each use (the registry
itself is loaded once).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import NamedTuple

from glocal import methods
from glocal.methods.spec import PublishedWeights


class MethodWeights(NamedTuple):
    """One published checkpoint and the ``--method`` it belongs to; the checkpoint's fields read through."""

    method: str
    weights: PublishedWeights

    @property
    def name(self) -> str:
        return self.weights.name

    @property
    def url(self) -> str:
        return self.weights.url

    @property
    def filename(self) -> str:
        return self.weights.filename

    @property
    def description(self) -> str:
        return self.weights.description

    @property
    def sha256(self) -> str | None:
        return self.weights.sha256


def published() -> dict[str, MethodWeights]:
    """Name -> published checkpoint, over every registered method (default method first, then by name).

    :raises RuntimeError: two specs publish the same name (a mistake in the spec files).
    """
    table: dict[str, MethodWeights] = {}
    for spec in methods.all_specs():
        for w in spec.weights:
            if w.name in table:
                raise RuntimeError(f"published weights {w.name!r} declared by methods {table[w.name].method!r} "
                                   f"and {spec.name!r}")
            table[w.name] = MethodWeights(spec.name, w)
    return table


class _Registry(Mapping[str, MethodWeights]):
    """A read-only mapping over :func:`published`, built when first read (importing it loads no spec)."""

    def __getitem__(self, name: str) -> MethodWeights:
        return published()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(published())

    def __len__(self) -> int:
        return len(published())

    def __repr__(self) -> str:
        return f"REGISTRY({sorted(published())})"


#: Name -> :class:`MethodWeights`, from the method registry.
REGISTRY: Mapping[str, MethodWeights] = _Registry()
