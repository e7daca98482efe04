"""One version scheme for every file glocal writes.

Every on-disk format has a name and an integer version, stored in the file (a JSON ``"format"`` /
``"version"`` pair, or the version field of a binary header after its magic bytes). :data:`FORMATS` lists
them with the version this glocal writes and the oldest it reads: a file between the two is read (and
upgraded in memory where the layout changed, e.g. index manifests 2 -> 3); a newer file asks for a newer
glocal; an older one is refused with what to do instead. :func:`check_version` is the one place that
decides, so every format answers the same way.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FileFormat:
    """One on-disk format.

    :param name: the format's name, as stored in the file.
    :param version: the version this glocal writes.
    :param oldest: the oldest version it still reads.
    :param what: what the file is, for messages.
    :param remedy: what to do with a file older than ``oldest``.
    """

    name: str
    version: int
    oldest: int
    what: str
    remedy: str


_REBUILD = "rebuild the index with 'glocal index build'"

#: every format glocal writes, by name
FORMATS: dict[str, FileFormat] = {f.name: f for f in (
    FileFormat("glocal-index", 3, 2, "index manifest", _REBUILD),
    FileFormat("glocal-asmk-index", 2, 1, "inverted-file manifest", _REBUILD),  # 2: ASMK* entries as records
    FileFormat("glocal-global-index", 1, 1, "global-index manifest", _REBUILD),
    FileFormat("glocal-segment", 1, 1, "inverted-file segment", _REBUILD),
    FileFormat("glocal-feature-file", 1, 1, "feature file", _REBUILD),
    FileFormat("glocal-features", 1, 1, "features folder", "extract again with 'glocal extract'"),
    FileFormat("glocal-checkpoint", 1, 1, "glocal model checkpoint", "save the model again with this glocal"),
    FileFormat("glocal-detector", 2, 2, "landmark detector checkpoint",
               "version 1 was the torchvision-format detector of an older glocal: retrain the detector with this "
               "glocal (glocal.train.detector_data.train_detector)"),
)}


def current(name: str) -> int:
    """The version of format ``name`` this glocal writes."""
    return FORMATS[name].version


def check_version(name: str, found: object, where: object, error: type[Exception]) -> int:
    """``found`` if this glocal reads version ``found`` of format ``name``, else ``error`` with one line
    naming ``where``, the versions and the remedy."""
    fmt = FORMATS[name]
    if not isinstance(found, int) or isinstance(found, bool):
        raise error(f"{where}: {fmt.what} without an integer version (found {found!r}); {fmt.remedy}")
    if found > fmt.version:
        raise error(f"{where}: {fmt.what} version {found} is newer than this glocal reads ({fmt.version}); "
                    "upgrade glocal")
    if found < fmt.oldest:
        raise error(f"{where}: {fmt.what} version {found} is too old for this glocal (reads {fmt.oldest} to "
                    f"{fmt.version}); {fmt.remedy}")
    return found
