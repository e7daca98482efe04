"""ImageNet weights that backbones take from installed packages (:mod:`glocal.models.backbones.catalog`): what
``glocal weights list`` shows beside the published checkpoints. Nothing is downloaded: a package is installed
with pip (the command is in :attr:`BackbonePackage.install`) and its file is checked by sha256 when loaded."""
from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass

from glocal.models.backbones.catalog import BACKBONES, MODEL_PACKAGES, PackageWeights


@dataclass(frozen=True)
class BackbonePackage:
    """One backbone's (or model's: :data:`~glocal.models.backbones.catalog.MODEL_PACKAGES`) package weights
    and whether the package is installed here."""

    backbone: str
    distribution: str
    version: str
    licence: str
    size: int
    sha256: str
    install: str
    installed: bool


def backbone_packages() -> list[BackbonePackage]:
    """Every backbone that has package weights, in the catalog's order, then the models' package weights."""
    entries: list[tuple[str, PackageWeights]] = [(n, e.weights) for n, e in BACKBONES.items() if e.weights is not None]
    rows = []
    for name, w in entries + list(MODEL_PACKAGES.items()):
        try:
            installed = importlib.metadata.version(w.distribution) == w.version
        except importlib.metadata.PackageNotFoundError:
            installed = False
        rows.append(BackbonePackage(name, w.distribution, w.version, w.licence, w.size, w.sha256, w.install, installed))
    return rows
