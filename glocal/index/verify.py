"""Checking an index folder end to end (``glocal index verify``) and repairing what the data allows.

:func:`verify_index` reads every checksummed file of an index once and reports each damaged part by name:

- ``manifest.json``: parsed and version-checked (it carries no checksum);
- ``features.glf``: every record's CRC32 (a torn tail left by a crash is not damage: it is ignored);
- ``ivf/`` (ASMK methods): its ``MANIFEST.json``, then the codebook, every segment and the tombstones file
  against the size and CRC32 the manifest records;
- ``words.glf`` (ASMK indexes built since it exists): every record's CRC32, like ``features.glf``; repair
  writes it again from the features;
- ``global/`` (global methods): its ``MANIFEST.json``, then every data file it names, the same way.

``sources.jsonl`` (image files, for drawing matches) has no checksum and is not checked.

:func:`repair_index` drops from search the images of a damaged ASMK segment (their features are intact in
``features.glf``; which images a segment held is recorded in the inverted file's manifest, so the damaged
file is not read) and the image of a damaged ``features.glf`` record whose name is known, then compacts the
index (:func:`glocal.index.compact.compact_index`), which rebuilds the first stage from the live images'
features: the damaged files are gone afterwards. A damaged codebook, tombstones file, manifest or global
index file cannot be repaired from the data in the folder: rebuild the index.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glocal.errors import DamagedIndexError, GlocalError
from glocal.io.atomic import file_damage

__all__ = ["Damage", "RepairReport", "VerifyReport", "repair_index", "verify_index"]


@dataclass(frozen=True)
class Damage:
    """One damaged part: ``kind`` (manifest, features, codebook, segment, tombstones, global), the file (relative
    to the index folder), what is wrong, and the images it concerns when known."""

    kind: str
    file: str
    detail: str
    images: tuple[str, ...] = ()
    #: features.glf: the record number; segment: the first image id it holds
    position: int | None = None
    #: segment: how many consecutive image ids it holds
    count: int = 0

    def line(self) -> str:
        return f"{self.file}: {self.detail}"


@dataclass
class VerifyReport:
    """Every damaged part found in ``path`` (empty when the index is sound) and how many files were checked."""

    path: Path
    damage: list[Damage] = field(default_factory=list)
    files_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.damage

    def summary(self) -> str:
        if self.ok:
            return f"{self.path}: {self.files_checked} files checked, no damage"
        return f"{self.path}: {len(self.damage)} damaged parts: " + "; ".join(d.line() for d in self.damage)


@dataclass
class RepairReport:
    """What :func:`repair_index` did: images dropped from search, parts it could not repair (with why), and
    the verification after the repair."""

    dropped: list[str] = field(default_factory=list)
    unrepaired: list[tuple[Damage, str]] = field(default_factory=list)
    after: VerifyReport | None = None


def _entry_damage(root: Path, sub: str, entry: dict[str, Any], kind: str) -> str | None:
    """Why the file named by a manifest entry (``file`` or key, ``bytes``, ``crc32``) is damaged, or None."""
    why = file_damage(root / sub / entry["file"], entry["bytes"], entry["crc32"])
    if why is None or why == "missing":
        return why
    return f"{why}: the {kind} file is damaged" if why.startswith("checksum") else f"{why} (truncated or replaced)"


def _check_features(root: Path, report: VerifyReport, file: str = "features.glf", kind: str = "features") -> None:
    from glocal.io.feature_file import RecordFile

    path = root / file
    report.files_checked += 1
    try:
        records = RecordFile(path)
    except GlocalError as exc:
        report.damage.append(Damage(kind, file, str(exc)))
        return
    try:
        for i, name, why in records.check():
            if kind == "words":  # records are named by image position
                report.damage.append(Damage(kind, file, f"record {i} (image position {name or 'unknown'}) is "
                                            f"damaged ({why})"))
                continue
            image = f"image {name!r}" if name else "image name unknown"
            report.damage.append(Damage(kind, file, f"record {i} ({image}) is damaged ({why})",
                                        (name,) if name else (), position=i))
    finally:
        records.close()


def _check_ivf(root: Path, report: VerifyReport) -> None:
    from glocal.index import manifest as mf

    report.files_checked += 1
    try:
        m = mf.read_manifest(root / "ivf")
        cb, segments, tomb = m["codebook"], list(m["segments"]), m.get("tombstones")
    except (GlocalError, KeyError, TypeError) as exc:
        report.damage.append(Damage("manifest", f"ivf/{mf.MANIFEST}", f"unreadable ({exc})"))
        return
    parts: list[tuple[str, dict]] = [("codebook", cb)] + [("segment", s) for s in segments]
    if tomb:
        parts.append(("tombstones", tomb))
    for kind, entry in parts:
        report.files_checked += 1
        why = _entry_damage(root, "ivf", entry, kind)
        if why is not None:
            start = int(entry["image_start"]) if kind == "segment" else None
            count = int(entry["images"]) if kind == "segment" else 0
            report.damage.append(Damage(kind, f"ivf/{entry['file']}", why, position=start, count=count))


def _check_global(root: Path, report: VerifyReport) -> None:
    from glocal.index import global_files as gf

    report.files_checked += 1
    try:
        m = gf.read_manifest(root / "global")
        files = dict(m.get("files", {}))
    except (GlocalError, AttributeError, TypeError, ValueError) as exc:
        report.damage.append(Damage("manifest", f"global/{gf.MANIFEST}", f"unreadable ({exc})"))
        return
    for name, entry in files.items():
        report.files_checked += 1
        why = _entry_damage(root, "global", {**entry, "file": name}, "global index")
        if why is not None:
            report.damage.append(Damage("global", f"global/{name}", why))


def verify_index(path: str | Path) -> VerifyReport:
    """Check every checksum of every file and manifest of the index folder ``path`` (reads every file once).

    :raises DamagedIndexError: ``path`` is not an index folder at all (no such folder, no ``manifest.json``).
    """
    from glocal.index.collection_manifest import manifest_options, read_manifest

    root = Path(path)
    if not root.is_dir():
        raise DamagedIndexError(f"{root}: no such index folder")
    if not (root / "manifest.json").exists():
        raise DamagedIndexError(f"{root}: not a glocal index (no manifest.json)")
    report = VerifyReport(root)
    report.files_checked += 1
    asmk: bool | None = None
    try:
        from glocal.methods.stages import AsmkIndexOptions

        _, options = manifest_options(read_manifest(root), root)
        asmk = isinstance(options.index, AsmkIndexOptions)
    except GlocalError as exc:
        report.damage.append(Damage("manifest", "manifest.json", str(exc)))
    _check_features(root, report)
    if asmk or (asmk is None and (root / "ivf").is_dir()):
        _check_ivf(root, report)
        if (root / "words.glf").exists():
            _check_features(root, report, "words.glf", "words")
    if asmk is False or (asmk is None and (root / "global").is_dir()):
        _check_global(root, report)
    return report


def repair_index(path: str | Path, report: VerifyReport | None = None) -> RepairReport:
    """Drop from search the images of each damaged ASMK segment and of each damaged ``features.glf`` record of
    known name, then compact the index so the damaged files go (module docstring). Damage that the data
    cannot repair is listed in :attr:`RepairReport.unrepaired` and nothing is changed for it; when any such
    damage is present, nothing is changed at all.
    """
    from glocal.index.collection import Collection
    from glocal.index.compact import compact_index

    root = Path(path)
    report = report or verify_index(root)
    result = RepairReport()
    if report.ok:
        result.after = report
        return result
    fixable = [d for d in report.damage if d.kind in ("segment", "features") and d.position is not None]
    words = [d for d in report.damage if d.kind == "words"]  # re-made from the features (compaction or rebuild)
    for d in report.damage:
        if d not in fixable and d not in words:
            result.unrepaired.append((d, _why_not(d)))
        elif d.kind == "features" and not d.images:
            result.unrepaired.append((d, "the record's image name cannot be read, so its image cannot be removed"))
    if result.unrepaired:
        result.after = report
        return result
    if not fixable:  # only the per-feature words are damaged: write them again from the features
        _rebuild_words(root)
        result.after = verify_index(root)
        return result
    collection = Collection.open(root, writable=True)
    try:
        live = collection.live_names()
        drop: dict[int, str] = {}
        for d in fixable:
            if d.kind == "segment":
                drop |= {i: live[i] for i in range(d.position, d.position + d.count) if i in live}
            elif live.get(d.position) == d.images[0]:
                drop[d.position] = d.images[0]
        names = list(dict.fromkeys(drop.values()))
        by_name = {n: i for i, n in live.items()}
        if any(by_name[n] != i for i, n in drop.items()):  # a damaged name that another live image also has
            raise DamagedIndexError(f"{root}: cannot tell the damaged images apart by name; rebuild the index")
        if names:
            collection.remove(names)
    finally:
        collection.close()
    result.dropped = names
    compact_index(root)  # rebuilds the first stage and the feature file from the live images
    result.after = verify_index(root)
    return result


def _rebuild_words(root: Path) -> None:
    from glocal.index.collection import Collection
    from glocal.index.word_store import rebuild

    with Collection.open(root, writable=True) as collection:
        ivf = collection.stage.index
        rebuild(root, collection.features, collection.stage.count, ivf.quantizer or ivf.codebook,
                ivf.codebook.centroids)


def _why_not(d: Damage) -> str:
    if d.kind == "manifest":
        return "a manifest has no copy to restore it from; rebuild the index"
    if d.kind == "codebook":
        return "every image's entries depend on the codebook; rebuild the index"
    if d.kind == "tombstones":
        return "which images were removed cannot be known without the tombstones file; rebuild the index"
    if d.kind == "global":
        return "the global index file cannot be restored from the folder; rebuild the index"
    return "this damage cannot be repaired; rebuild the index"
