"""Feature shards: the output of ``glocal extract``, the input of ``glocal index build --features``.

A features folder holds ``extraction.json`` (format, version, method and its options), one checksummed
record file per shard (``shard-00000.glf``, written by :class:`glocal.io.feature_file.FeatureFile`) and
``sources.jsonl`` (each image's file). A shard file is written under a temporary name and renamed when
closed (atomic), and is complete once its name is listed under ``"done"`` in ``extraction.json``
(rewritten atomically afterwards) with the CRC-32 of its bytes under ``"checksums"``. An interrupted run is
resumed by running the same command again: complete shards whose file still has its checksum are kept, the
others (missing, damaged, never finished) are extracted again.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glocal import methods
from glocal.errors import BadInputError, BadOptionError
from glocal.io.atomic import crc32_file, write_json_atomic
from glocal.io.feature_file import FeatureFile
from glocal.io.versions import check_version, current
from glocal.methods.spec import MethodOptions, MethodSpec
from glocal.records import ImageFeatures

FEATURES_FORMAT = "glocal-features"
FEATURES_VERSION = current(FEATURES_FORMAT)
MANIFEST = "extraction.json"
#: images per shard by default
SHARD_SIZE = 1000
#: a shard file being written is named ``shard-NNNNN.glf`` + PARTIAL + a unique tail, renamed when complete
PARTIAL = ".partial-"


@dataclass(frozen=True)
class ShardJob:
    """One shard to extract: its number, its images and the file it is written to."""

    number: int
    paths: tuple[Path, ...]
    names: tuple[str, ...]

    @property
    def filename(self) -> str:
        return f"shard-{self.number:05d}.glf"


def plan_shards(paths: Sequence[Path], names: Sequence[str], shard_size: int = SHARD_SIZE) -> list[ShardJob]:
    """The images split into shards of ``shard_size`` in order (the same list always gives the same shards)."""
    if shard_size < 1:
        raise BadOptionError(f"--shard-size must be >= 1, got {shard_size}")
    return [ShardJob(i // shard_size, tuple(Path(p) for p in paths[i:i + shard_size]), tuple(names[i:i + shard_size]))
            for i in range(0, len(paths), shard_size)]


class FeatureShards:
    """A features folder (module docstring): what was extracted, with which method and options."""

    def __init__(self, root: Path, manifest: dict[str, Any], spec: MethodSpec, options: MethodOptions) -> None:
        self.root = Path(root)
        self.manifest = manifest
        self.spec = spec
        self.options = options

    @classmethod
    def create_or_resume(cls, root: Path, spec: MethodSpec, options: MethodOptions) -> FeatureShards:
        """A new features folder, or the existing one at ``root`` when it was made with the same method and
        options (to resume); :class:`BadInputError` when it was made otherwise."""
        root = Path(root)
        if (root / MANIFEST).exists():
            found = cls.open(root)
            if found.spec.name != spec.name or found.options.extractor != options.extractor or \
                    getattr(found.options.index, "regions", None) != getattr(options.index, "regions", None):
                raise BadInputError(f"{root}: holds features of another method or other extractor options; "
                                    "choose another --out or delete it")
            return found
        if root.exists() and any(root.iterdir()):
            raise BadInputError(f"{root}: exists and is not a features folder; choose another --out")
        root.mkdir(parents=True, exist_ok=True)
        manifest = {"format": FEATURES_FORMAT, "version": FEATURES_VERSION, "method": spec.name,
                    "options": options.to_dict(), "done": [], "counts": {}, "checksums": {}}
        write_json_atomic(root / MANIFEST, manifest)
        return cls(root, manifest, spec, options)

    @classmethod
    def open(cls, root: Path) -> FeatureShards:
        """The features folder at ``root``; :class:`BadInputError` names what is wrong with it."""
        import json

        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise BadInputError(f"{root}: not a features folder (no {MANIFEST}; make one with 'glocal extract')")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadInputError(f"{path}: cannot be read ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FEATURES_FORMAT:
            raise BadInputError(f"{path}: not a glocal features manifest")
        check_version(FEATURES_FORMAT, manifest.get("version"), path, BadInputError)
        try:
            spec = methods.get(str(manifest.get("method")))
            options = spec.options_from_dict(manifest.get("options", {}), str(path))
        except BadOptionError as exc:
            raise BadInputError(f"{path}: {exc}") from None
        return cls(root, manifest, spec, options)

    def is_done(self, job: ShardJob) -> bool:
        """Whether ``job``'s shard is complete: recorded done, its file present with the recorded CRC-32
        (a folder from before checksums were recorded: present)."""
        path = self.root / job.filename
        if job.filename not in self.manifest["done"] or not path.is_file():
            return False
        crc = self.manifest.get("checksums", {}).get(job.filename)
        return crc is None or crc32_file(path) == crc

    def shard_writer(self, job: ShardJob) -> FeatureFile:
        """An empty feature file for ``job`` (a half-written one from an interrupted run is discarded)."""
        path = self.root / job.filename
        path.unlink(missing_ok=True)
        return FeatureFile(path, writable=True)

    def mark_done(self, job: ShardJob, count: int, crc: int | None = None) -> None:
        """Record ``job``'s shard as complete (after its file was closed and renamed), with the CRC-32 of
        its bytes (computed here when not given)."""
        if job.filename not in self.manifest["done"]:
            self.manifest["done"].append(job.filename)
        self.manifest["counts"][job.filename] = count
        self.manifest.setdefault("checksums", {})[job.filename] = crc32_file(self.root / job.filename) \
            if crc is None else int(crc)
        write_json_atomic(self.root / MANIFEST, self.manifest)

    def remove_partial(self) -> list[Path]:
        """Delete the temporary shard files left by killed workers (:data:`PARTIAL`); returns them."""
        found = sorted(self.root.glob(f"shard-*.glf{PARTIAL}*"))
        for p in found:
            p.unlink(missing_ok=True)
        return found

    @property
    def shard_files(self) -> list[Path]:
        return [self.root / name for name in sorted(self.manifest["done"])]

    def __len__(self) -> int:
        return sum(self.manifest["counts"].values())

    def names(self) -> set[str]:
        """Names of the images in complete shards."""
        out: set[str] = set()
        for path in self.shard_files:
            shard = FeatureFile(path)
            try:
                out.update(shard.names)
            finally:
                shard.close()
        return out

    def __iter__(self) -> Iterator[ImageFeatures]:
        """Every image's features, shard by shard, one at a time."""
        for path in self.shard_files:
            shard = FeatureFile(path)
            try:
                yield from shard
            finally:
                shard.close()
