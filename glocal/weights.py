"""Published checkpoints by name: where each lives, how it loads, and a verified, resumable download.

``--checkpoint`` accepts a file path or one of the names in :data:`REGISTRY`; a name is downloaded once
into the cache (``$GLOCAL_CACHE/weights`` or ``~/.cache/glocal/weights``) through
:func:`glocal.evaluate.download.download_file` (resumes with HTTP ``Range``, checks the size, checks the
sha256 where it is known, shows progress) and then loaded like any file. The sha256 of every finished
download is recorded next to it (``<file>.sha256``) and checked again on later use, so a damaged cache is
noticed. ``GLOCAL_WEIGHTS_URL`` replaces the hosts (a mirror, or a local server in the tests): the file
name is appended to it.

Only the releases our loaders read directly are listed: the official PyTorch files of HOW and FIRe.
DELG's official release is a TensorFlow SavedModel (``storage.googleapis.com/delf/r50delg_*.tar.gz``),
which needs TensorFlow once to become the ``.npz`` that :mod:`glocal.models.checkpoints` reads; DOLG and
ViTGaL have no official weights, and the PyTorch ports of DOLG load from a local file. The official
digests are not published; ``sha256`` stays None until someone records them from a verified download.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["REGISTRY", "PublishedWeights", "WeightsError", "cache_dir", "fetch", "resolve_checkpoint"]


class WeightsError(Exception):
    """An unknown name, a method mismatch, or a failed / damaged download (the message says which)."""


@dataclass(frozen=True)
class PublishedWeights:
    """One published checkpoint.

    :param name: what ``--checkpoint`` accepts.
    :param method: the ``--method`` it belongs to.
    :param url: official location.
    :param filename: file name in the cache (and under ``GLOCAL_WEIGHTS_URL``).
    :param description: training data and setting, as published.
    :param sha256: expected digest, when known.
    """

    name: str
    method: str
    url: str
    filename: str
    description: str
    sha256: str | None = None


_HOW_BASE = "http://ptak.felk.cvut.cz/personal/toliageo/share/how/models"
_FIRE_BASE = "http://download.europe.naverlabs.com/ComputerVision/FIRe"

#: Name -> published checkpoint (locations from the official repositories gtolias/how and naver/fire).
REGISTRY: dict[str, PublishedWeights] = {w.name: w for w in (
    PublishedWeights("how-r50", "how", f"{_HOW_BASE}/how_r50-.pth", "how_r50-.pth",
                     "HOW, ResNet-50 without its last block, trained on SfM-120k (ECCV 2020)"),
    PublishedWeights("fire", "fire", f"{_FIRE_BASE}/official/fire.pth", "fire.pth",
                     "FIRe, ResNet-50 without its last block + LIT, trained on SfM-120k (ICLR 2022)"),
)}


def cache_dir() -> Path:
    """Where downloaded weights are kept: ``$GLOCAL_CACHE/weights`` or ``~/.cache/glocal/weights``."""
    root = os.environ.get("GLOCAL_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "glocal") / "weights"


def _lookup(name: str) -> PublishedWeights:
    try:
        return REGISTRY[name]
    except KeyError:
        raise WeightsError(f"unknown weights {name!r}; known: {', '.join(sorted(REGISTRY))} "
                           "(or give a file path)") from None


def fetch(name: str, *, progress: bool = True, dest_dir: Path | None = None) -> Path:
    """The local file of the published weights ``name``, downloaded first if needed (see module docstring).

    :raises WeightsError: unknown name, failed download, or a cached file whose digest changed.
    """
    from glocal.evaluate.download import DownloadError, download_file
    from glocal.io.atomic import sha256_file

    w = _lookup(name)
    folder = Path(dest_dir) if dest_dir is not None else cache_dir()
    path = folder / w.filename
    record = path.with_name(path.name + ".sha256")
    if path.is_file() and record.is_file():
        recorded = record.read_text().strip()
        if sha256_file(path) == recorded and (w.sha256 is None or recorded == w.sha256):
            return path
        raise WeightsError(f"{path}: its sha256 no longer matches the one recorded at download "
                           f"({recorded}); delete it to download again")
    mirror = os.environ.get("GLOCAL_WEIGHTS_URL")
    url = f"{mirror.rstrip('/')}/{w.filename}" if mirror else w.url
    try:
        digest = download_file(url, path, sha256=w.sha256, progress=progress)
    except DownloadError as exc:
        raise WeightsError(f"weights {name!r}: {exc}") from None
    record.write_text(digest + "\n")
    return path


def resolve_checkpoint(value: str | Path, method: str, *, progress: bool = True) -> Path:
    """``--checkpoint`` as given: an existing file (returned as is) or a published name (fetched).

    :raises WeightsError: neither a file nor a known name, or a name published for another method.
    """
    path = Path(value)
    if path.exists():
        return path
    text = str(value)
    if text not in REGISTRY:
        raise WeightsError(f"{text}: no such file, and not a published checkpoint name "
                           f"({', '.join(sorted(REGISTRY))})")
    w = REGISTRY[text]
    if w.method != method:
        raise WeightsError(f"weights {text!r} are for --method {w.method}, not {method}")
    return fetch(text, progress=progress)
