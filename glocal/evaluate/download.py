"""Download the revisited Oxford / Paris test sets and the R1M distractors, resumably and verified.

Every file is fetched into ``<file>.part`` and resumed with an HTTP ``Range`` request when a partial
file exists (a server that ignores the range restarts from zero). The finished file is checked against
the size announced by the server and, where :data:`SOURCES` knows it, its sha256; the sha256 of every
file is recorded in ``dest/checksums.json``. Tar archives are extracted member by member refusing
absolute paths, ``..``, links and special files, so an archive cannot write outside its folder.
"""
from __future__ import annotations

import http.client
import json
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from glocal.errors import BadInputError
from glocal.io.atomic import sha256_file

CHUNK = 1 << 16
GND_BASE = "http://cmp.felk.cvut.cz/revisitop/data/datasets"
OXFORD_BASE = "https://www.robots.ox.ac.uk/~vgg/data/oxbuildings"
PARIS_BASE = "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings"
R1M_BASE = "http://ptak.felk.cvut.cz/revisitop/revisitop1m"


class DownloadError(BadInputError):
    """A download or extraction failed; the message names the URL or file and the problem."""


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


def _total_from_headers(status: int, headers: object, offset: int) -> int | None:
    get = headers.get
    if status == 206:
        content_range = get("Content-Range") or ""
        total = content_range.rpartition("/")[2]
        if total.isdigit():
            return int(total)
    length = get("Content-Length")
    if length is not None and str(length).isdigit():
        return int(length) + (offset if status == 206 else 0)
    return None


def _fetch_once(url: str, part: Path, progress: Progress | None, timeout: float) -> int | None:
    """One request appending to ``part`` from its current size; returns the announced total size."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "glocal-download"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # range not satisfiable: the part file is already complete
            return offset
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    with response:
        status = response.status
        if status == 200 and offset:
            offset = 0  # the server ignored the range: start again
        elif status not in (200, 206):
            raise DownloadError(f"{url}: unexpected HTTP status {status}")
        if status == 206:
            content_range = response.headers.get("Content-Range") or ""
            start = content_range.removeprefix("bytes ").partition("-")[0]
            if start.isdigit() and int(start) != offset:
                raise DownloadError(f"{url}: asked for bytes from {offset}, the server sent {content_range!r}")
        total = _total_from_headers(status, response.headers, offset)
        task = progress.add_task(part.name.removesuffix(".part"), total=total, completed=offset) if progress else None
        with open(part, "ab" if offset else "wb") as f:
            while True:
                block = response.read(CHUNK)
                if not block:
                    break
                f.write(block)
                if progress is not None and task is not None:
                    progress.advance(task, len(block))
        if progress is not None and task is not None:
            progress.remove_task(task)
    return total


def download_file(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    size: int | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    progress: bool = True,
    retry_wait: float = 1.0,
) -> str:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming after interruptions.

    :param sha256: expected hex digest; a mismatch deletes the part file and raises.
    :param size: expected size in bytes (else the size the server announced is checked).
    :param retries: further attempts after a failed or short transfer, each resuming with ``Range``.
    :returns: the sha256 of the downloaded file.
    :raises DownloadError: HTTP errors, a short file after all retries, or a size / digest mismatch.
    """
    dest = Path(dest)
    if dest.is_file():
        digest = sha256_file(dest)
        if (sha256 is None or digest == sha256) and (size is None or dest.stat().st_size == size):
            return digest
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    bar = Progress(*columns, disable=not progress, transient=True)
    last_error: Exception | None = None
    with bar:
        for attempt in range(retries + 1):
            try:
                total = _fetch_once(url, part, bar, timeout)
            except DownloadError:
                raise
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:  # resets, timeouts, short reads
                last_error = exc
            else:
                expected = size if size is not None else total
                have = part.stat().st_size if part.exists() else 0
                if expected is None or have == expected:
                    break
                if have > expected:
                    part.unlink()
                    raise DownloadError(f"{url}: got {have} bytes, more than the expected {expected}; deleted {part}")
                last_error = DownloadError(f"{url}: transfer stopped at {have} of {expected} bytes")
            if attempt < retries:
                time.sleep(retry_wait)
        else:
            raise DownloadError(f"{url}: failed after {retries + 1} attempts, partial data kept in {part} "
                                f"for a later resume ({last_error})")
    digest = sha256_file(part)
    if sha256 is not None and digest != sha256:
        part.unlink()
        raise DownloadError(f"{url}: sha256 {digest} does not match the expected {sha256}; deleted the download")
    if size is not None and part.stat().st_size != size:
        raise DownloadError(f"{url}: size {part.stat().st_size} does not match the expected {size}")
    part.replace(dest)
    return digest


def _safe_members(archive: tarfile.TarFile, archive_path: Path) -> list[tarfile.TarInfo]:
    members = []
    for m in archive.getmembers():
        name = PurePosixPath(m.name)
        if not name.parts and m.isdir():  # "./", the archive's own top folder
            continue
        drive = bool(name.parts) and ":" in name.parts[0]
        if not name.parts or name.is_absolute() or ".." in name.parts or m.name.startswith(("/", "\\")) or drive:
            raise DownloadError(f"{archive_path}: refuses member {m.name!r} (path outside the destination)")
        if m.issym() or m.islnk():
            raise DownloadError(f"{archive_path}: refuses link member {m.name!r}")
        if not (m.isfile() or m.isdir()):
            raise DownloadError(f"{archive_path}: refuses special member {m.name!r} (device, fifo, ...)")
        members.append(m)
    return members


def safe_extract(archive_path: str | Path, dest: str | Path) -> list[Path]:
    """Extract a tar (any compression) into ``dest`` refusing traversal, links and special files.

    The whole archive is checked before anything is written. Returns the extracted regular files.
    """
    archive_path, dest = Path(archive_path), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    base = dest.resolve()
    try:
        with tarfile.open(archive_path, "r:*") as archive:
            members = _safe_members(archive, archive_path)
            out = []
            for m in members:
                target = (base / m.name).resolve()
                if target != base and base not in target.parents:
                    raise DownloadError(f"{archive_path}: refuses member {m.name!r} (resolves outside {dest})")
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = archive.extractfile(m)
                if source is None:
                    raise DownloadError(f"{archive_path}: cannot read member {m.name!r}")
                with source, open(target, "wb") as f:
                    shutil.copyfileobj(source, f)
                out.append(target)
    except tarfile.TarError as exc:
        raise DownloadError(f"{archive_path}: not a readable tar archive ({exc})") from exc
    return out


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
        ``{base_url}/{filename}`` (a mirror holding the files side by side).
    :param sources: replaces :data:`SOURCES` (tests, mirrors).
    :returns: the dataset folder.
    """
    table = sources if sources is not None else SOURCES
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
        digest = download_file(url, target, sha256=src.sha256, size=src.size, retries=retries, progress=progress)
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
