"""Download the revisited Oxford / Paris test sets and the R1M distractors, resumably and verified.

Every file is fetched into ``<file>.part`` and resumed with an HTTP ``Range`` request when a partial
file exists (a server that ignores the range restarts from zero). The finished file is checked against
the size announced by the server and, where :data:`SOURCES` knows it, its sha256; the sha256 of every
file is recorded in ``dest/checksums.json``. Tar archives are extracted member by member refusing
absolute paths, ``..``, links and special files, so an archive cannot write outside its folder.

``GLOCAL_DATASETS_URL`` (or ``base_url``) fetches every file from a mirror instead. Without network the
error says so, names the URL and how to place the files by hand (:func:`by_hand`).
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from glocal.io.download import DownloadError, download_file, safe_extract

__all__ = ["SOURCES", "DownloadError", "Source", "download_dataset", "download_file", "safe_extract"]

GND_BASE = "http://cmp.felk.cvut.cz/revisitop/data/datasets"
OXFORD_BASE = "https://www.robots.ox.ac.uk/~vgg/data/oxbuildings"
PARIS_BASE = "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings"
R1M_BASE = "http://ptak.felk.cvut.cz/revisitop/revisitop1m"


@dataclass(frozen=True)
class Source:
    """One file to fetch.

    :param url: full URL.
    :param filename: name under the destination folder.
    :param extract: ``"flat"`` (tar: every image moved into ``jpg/``), ``"tree"`` (tar: extracted into
        ``jpg/`` keeping folders) or ``None`` (kept as is).
    :param sha256: expected digest when known, else None (the computed one is recorded).
    :param size: expected size in bytes when known.
    """

    url: str
    filename: str
    extract: str | None = None
    sha256: str | None = None
    size: int | None = None


def _r1m_sources(base: str) -> list[Source]:
    files = [Source(f"{base}/revisitop1m.txt", "revisitop1m.txt")]
    files += [Source(f"{base}/jpg/revisitop1m.{i}.tar.gz", f"revisitop1m.{i}.tar.gz", "tree") for i in range(1, 101)]
    return files


#: Official locations (one table so they can be changed). Keys: dataset name -> list of files.
SOURCES: dict[str, list[Source]] = {
    "roxford5k": [
        Source(f"{GND_BASE}/roxford5k/gnd_roxford5k.pkl", "gnd_roxford5k.pkl"),
        Source(f"{OXFORD_BASE}/oxbuild_images-v1.tgz", "oxbuild_images-v1.tgz", "flat"),
    ],
    "rparis6k": [
        Source(f"{GND_BASE}/rparis6k/gnd_rparis6k.pkl", "gnd_rparis6k.pkl"),
        Source(f"{PARIS_BASE}/paris_1-v1.tgz", "paris_1-v1.tgz", "flat"),
        Source(f"{PARIS_BASE}/paris_2-v1.tgz", "paris_2-v1.tgz", "flat"),
    ],
    "r1m": _r1m_sources(R1M_BASE),
}

#: environment variable naming a mirror of every dataset file (``$GLOCAL_DATASETS_URL/FILENAME``)
MIRROR_ENV = "GLOCAL_DATASETS_URL"


def by_hand(name: str, src: Source, url: str, folder: Path) -> str:
    """How to place ``src`` by hand so that the next run (and the dataset loader) finds it."""
    if src.extract is None:
        return (f"to place it by hand, download {url} on a machine with network and save it as "
                f"{folder / src.filename} (where 'glocal eval {name} --data {folder}' looks for it)")
    return (f"to place it by hand, download {url} on a machine with network and save it as "
            f"{folder / src.filename}, then run this command again (it extracts the archive), or extract its "
            f"images yourself into {folder / 'jpg'}/ (where 'glocal eval {name} --data {folder}' looks for them)")


def _extract_flat(archive: Path, jpg: Path) -> int:
    """Extract into a scratch folder, then move every .jpg into ``jpg/`` (Paris tars nest by landmark)."""
    scratch = jpg.parent / f".extract-{archive.name}"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        files = safe_extract(archive, scratch)
        jpg.mkdir(parents=True, exist_ok=True)
        moved = 0
        for f in files:
            if f.suffix.lower() == ".jpg":
                f.replace(jpg / f.name)
                moved += 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return moved


def download_dataset(
    name: str,
    dest: str | Path,
    base_url: str | None = None,
    sources: dict[str, list[Source]] | None = None,
    progress: bool = True,
    keep_archives: bool = False,
    retries: int = 3,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Download ``roxford5k`` | ``rparis6k`` | ``r1m`` into ``dest/<name>`` in the official layout.

    Result: ``dest/<name>/gnd_<name>.pkl`` and ``jpg/`` (R1M: ``revisitop1m.txt`` and ``jpg/...``).
    Finished archives are remembered in ``checksums.json`` so a rerun skips them.

    :param base_url: replaces the host part of every URL: the file is fetched from
        ``{base_url}/{filename}`` (a mirror holding the files side by side); default ``$GLOCAL_DATASETS_URL``.
    :param sources: replaces :data:`SOURCES` (tests, mirrors).
    :returns: the dataset folder.
    """
    table = sources if sources is not None else SOURCES
    base_url = base_url or os.environ.get(MIRROR_ENV) or None
    if name not in table:
        raise DownloadError(f"unknown dataset {name!r}; expected one of {sorted(table)}")
    folder = Path(dest) / name
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / "checksums.json"
    manifest: dict[str, dict[str, object]] = {}
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DownloadError(f"{manifest_path}: not valid JSON ({exc}); delete it to start over") from exc
    say = log or (lambda _msg: None)
    for src in table[name]:
        entry = manifest.get(src.filename, {})
        if "extracted" in entry:
            say(f"{src.filename}: already done")
            continue
        url = f"{base_url.rstrip('/')}/{src.filename}" if base_url else src.url
        target = folder / src.filename
        say(f"fetching {url}")
        digest = download_file(url, target, sha256=src.sha256, size=src.size, retries=retries, progress=progress,
                               by_hand=by_hand(name, src, url, folder))
        entry = {"url": url, "sha256": digest, "size": target.stat().st_size, "verified": src.sha256 is not None}
        if src.extract is not None:
            jpg = folder / "jpg"
            if src.extract == "flat":
                count = _extract_flat(target, jpg)
            else:
                count = len(safe_extract(target, jpg))
            entry["extracted"] = count
            say(f"{src.filename}: extracted {count} files")
            if not keep_archives:
                target.unlink()
        manifest[src.filename] = entry
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    return folder
