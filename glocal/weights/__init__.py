"""Published checkpoints by name: which exist (from the method registry) and a verified, resumable download.

``--checkpoint`` accepts a file path or one of the names in :data:`REGISTRY`, which is built from the
method specs (:attr:`glocal.methods.MethodSpec.weights`, see :mod:`glocal.weights.published`): a method
publishes a checkpoint by naming it in its spec file, nowhere else. A name is downloaded once into the
cache (``$GLOCAL_CACHE/weights`` or ``~/.cache/glocal/weights``) through
:func:`glocal.io.download.download_file` (resumes with HTTP ``Range``, checks the size, checks the
sha256 where it is known, shows progress) and then loaded like any file. The sha256 of every finished
download is recorded next to it (``<file>.sha256``) and checked again on later use, so a damaged cache is
noticed. ``GLOCAL_WEIGHTS_URL`` replaces the hosts (a mirror, or a local server in the tests): the file
name is appended to it.

Only the releases our loaders read directly are published: the official PyTorch files of HOW and FIRe.
DELG's official release is a TensorFlow SavedModel (``storage.googleapis.com/delf/r50delg_*.tar.gz``),
which needs TensorFlow once to become the ``.npz`` that :mod:`glocal.models.checkpoints` reads; DOLG and
ViTGaL have no official weights, and the PyTorch ports of DOLG load from a local file. The official
digests are not published; ``sha256`` stays None until someone records them from a verified download.
"""
from __future__ import annotations

import os
from pathlib import Path

from glocal.errors import BadCheckpointError
from glocal.methods.spec import PublishedWeights
from glocal.weights.published import REGISTRY, MethodWeights, published

__all__ = ["REGISTRY", "MethodWeights", "PublishedWeights", "WeightsError", "cache_dir", "fetch", "published",
           "resolve_checkpoint"]


class WeightsError(BadCheckpointError):
    """An unknown name, a method mismatch, or a failed / damaged download (the message says which)."""


def cache_dir() -> Path:
    """Where downloaded weights are kept: ``$GLOCAL_CACHE/weights`` or ``~/.cache/glocal/weights``."""
    root = os.environ.get("GLOCAL_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "glocal") / "weights"


def _lookup(name: str) -> PublishedWeights:
    table = published()
    if name not in table:
        raise WeightsError(f"unknown weights {name!r}; known: {', '.join(sorted(table))} (or give a file path)")
    return table[name].weights


def fetch(name: str, *, progress: bool = True, dest_dir: Path | None = None) -> Path:
    """The local file of the published weights ``name``, downloaded first if needed (see module docstring).

    :raises WeightsError: unknown name, failed download, or a cached file whose digest changed.
    """
    from glocal.io.atomic import sha256_file
    from glocal.io.download import DownloadError, download_file

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
        hint = (f"to place it by hand, download {url} on a machine with network and save it as {path} "
                f"(where --checkpoint {name} looks for it)")
        digest = download_file(url, path, sha256=w.sha256, progress=progress, by_hand=hint)
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
    table = published()
    if text not in table:
        raise WeightsError(f"{text}: no such file, and not a published checkpoint name "
                           f"({', '.join(sorted(table))})")
    w = table[text]
    if w.method != method:
        raise WeightsError(f"weights {text!r} are for --method {w.method}, not {method}")
    return fetch(text, progress=progress)
