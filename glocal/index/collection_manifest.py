"""The ``manifest.json`` of an index folder: format, version, method and its typed options.

Version 3 (this glocal) stores the method's options as the four groups of
:class:`glocal.methods.spec.MethodOptions` (``extractor``, ``index``, ``search``, ``rerank``). Version 2
(glocal before the method registry) is read and upgraded in memory by :func:`upgrade_v2` (and written back
as version 3 the next time the index is opened for writing); older or newer versions are refused with a
message saying how to rebuild.

Since checksums, the manifest carries ``crc32``: the CRC-32 of the canonical JSON of every other field
(:func:`manifest_crc32`); a manifest whose bytes changed is refused as damaged. Manifests written before
have no such field and are read as they are.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

from glocal import methods
from glocal.errors import BadOptionError, DamagedIndexError
from glocal.io.atomic import write_json_atomic
from glocal.io.versions import check_version, current
from glocal.methods.spec import MethodOptions, MethodSpec

INDEX_FORMAT = "glocal-index"
INDEX_VERSION = current(INDEX_FORMAT)
#: suffix of the folder a compaction writes before swapping it in
COMPACTING_SUFFIX = ".compacting"


def read_manifest(path: Path) -> dict[str, Any]:
    """The checked ``manifest.json`` of the index at ``path`` (version 2 upgraded to 3); a
    :class:`DamagedIndexError` names the problem (and how to finish an interrupted compaction)."""
    path = Path(path)
    mf = path / "manifest.json"
    if not mf.exists():
        done = path.with_name(path.name + COMPACTING_SUFFIX)
        if not path.exists() and (done / "manifest.json").exists():
            raise DamagedIndexError(f"{path}: a 'glocal index compact' was interrupted after moving the old index "
                                    f"to {path.name}.old; its complete result is {done}: rename that to {path}")
        if not path.exists():
            raise DamagedIndexError(f"{path}: no such index folder")
        raise DamagedIndexError(f"{path}: not a glocal index (no manifest.json)")
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DamagedIndexError(f"{mf}: not a valid JSON manifest ({exc})") from None
    except OSError as exc:
        raise DamagedIndexError(f"{mf}: cannot be read ({exc.strerror or exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != INDEX_FORMAT:
        raise DamagedIndexError(f"{mf}: not a glocal index manifest")
    version = check_version(INDEX_FORMAT, manifest.get("version"), mf, DamagedIndexError)
    if "crc32" in manifest:  # written since checksums (older manifests have none and are still read)
        recorded = manifest.pop("crc32")
        if recorded != manifest_crc32(manifest):
            raise DamagedIndexError(f"{mf}: checksum mismatch: the manifest is damaged (edited or corrupted); "
                                    "rebuild the index")
    return MIGRATIONS[version](manifest, mf) if version in MIGRATIONS else manifest


def manifest_crc32(manifest: dict[str, Any]) -> int:
    """CRC-32 of the canonical JSON (sorted keys, no spaces, UTF-8) of ``manifest`` without its ``crc32``."""
    rest = {k: v for k, v in manifest.items() if k != "crc32"}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return zlib.crc32(text.encode("utf-8"))


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` atomically (temporary file, fsync, rename, fsync of the folder), with a
    ``crc32`` field over the canonical JSON of the rest (checked by :func:`read_manifest`)."""
    rest = {k: v for k, v in manifest.items() if k != "crc32"}
    write_json_atomic(Path(path) / "manifest.json", rest | {"crc32": manifest_crc32(rest)})


def new_manifest(spec: MethodSpec, options: MethodOptions, **extra: Any) -> dict[str, Any]:
    from glocal import __version__

    return {"format": INDEX_FORMAT, "version": INDEX_VERSION, "written_by": f"glocal {__version__}",
            "method": spec.name, "options": options.to_dict()} | extra


def manifest_options(manifest: dict[str, Any], where: Path) -> tuple[MethodSpec, MethodOptions]:
    """The method spec and typed options a manifest records; unknown methods or keys are a
    :class:`DamagedIndexError` naming the manifest."""
    try:
        spec = methods.get(str(manifest.get("method")))
        return spec, spec.options_from_dict(manifest.get("options", {}), f"{where}/manifest.json")
    except BadOptionError as exc:
        raise DamagedIndexError(f"{where}: {exc}") from None


def upgrade_v2(old: dict[str, Any], where: Path) -> dict[str, Any]:
    """A version-2 manifest (settings as ``extractor`` / ``asmk`` or ``global`` / ``rerank`` / ``regions``
    mappings) as version 3; nothing on disk changes."""
    try:
        extractor = dict(old.get("extractor", {}))
        if "max_batch" in extractor:  # HOW / FIRe before the shared extractor options
            extractor["batch_size"] = extractor.pop("max_batch")
        index: dict[str, Any]
        if old.get("shortlist") == "asmk":
            asmk = dict(old.get("asmk", {}))
            index = {k: asmk[k] for k in ("binary", "alpha", "tau", "db_assignments", "query_assignments",
                                          "codebook_size", "codebook_descriptors_per_image", "aggregation")
                     if k in asmk}
            regions = old.get("regions") or {}
            if regions:
                index["regions"] = regions.get("source", "none")
                index["detector"] = regions.get("detector")
        else:
            index = {"index": dict(old.get("global", {})).get("kind", "exact")}
        rerank_old = dict(old.get("rerank", {}))
        matcher = dict(rerank_old.get("matcher", {}))
        verifier = dict(rerank_old.get("verifier", {}))
        rerank = {"rerank_top": rerank_old.get("top", 0)}
        rerank |= {k: matcher[k] for k in ("max_distance", "ratio", "mutual") if k in matcher}
        rerank |= {k: verifier[k] for k in ("model", "threshold_px", "max_iters", "confidence") if k in verifier}
        if "method" in verifier:
            rerank["estimator"] = verifier["method"]
        if "seed" in verifier:
            rerank["ransac_seed"] = verifier["seed"]
    except (TypeError, ValueError, AttributeError) as exc:
        raise DamagedIndexError(f"{where}: a version-2 manifest that cannot be upgraded ({exc})") from None
    upgraded = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "method": old.get("method"),
                "options": {"extractor": extractor, "index": index, "rerank": rerank},
                "upgraded_from": 2}
    if "codebook" in old:
        upgraded["codebook"] = old["codebook"]
    return upgraded


#: how each older readable manifest version becomes the current one (in memory; written back when opened
#: for writing)
MIGRATIONS = {2: upgrade_v2}
