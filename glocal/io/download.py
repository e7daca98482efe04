"""Resumable, verified downloads and safe archive extraction (datasets and published weights).

Every file is fetched into ``<file>.part`` and resumed with an HTTP ``Range`` request when a partial file
exists (a server that ignores the range restarts from zero). The finished file is checked against the size
announced by the server and, where the caller knows it, its sha256. Tar archives are extracted member by
member refusing absolute paths, ``..``, links and special files, so an archive cannot write outside its
folder.

When the host cannot be reached at all (no network, a name that does not resolve, a refused connection)
the error is :class:`UnreachableError`: it says so, names the URL and where to put the file by hand
(``by_hand``), and is not retried (a refused or unresolvable host does not come back in a second).
"""
from __future__ import annotations

import errno
import http.client
import os
import shutil
import socket
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
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


class UnreachableError(DownloadError):
    """The host of a URL could not be reached (no network, unknown host, connection refused or timed out)."""

    def __init__(self, message: str, url: str) -> None:
        super().__init__(message)
        self.url = url


#: errno values that mean "this host cannot be reached from here" (retrying at once does not help)
_UNREACHABLE = {errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN}


def _unreachable_reason(exc: BaseException) -> str | None:
    """Why ``exc`` means the host cannot be reached at all, or None when it is another failure."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError) else exc
    if isinstance(reason, socket.gaierror):
        return "the host name does not resolve"
    if isinstance(reason, ConnectionRefusedError):
        return "the connection was refused"
    if isinstance(reason, TimeoutError | socket.timeout):
        return "the connection timed out"
    if isinstance(reason, OSError) and reason.errno in _UNREACHABLE:
        return os.strerror(reason.errno).lower()
    return None


def host_of(url: str) -> str:
    """The host (and port) part of ``url``, for messages."""
    return urllib.parse.urlsplit(url).netloc or url


def by_hand_hint(url: str, dest: str | Path) -> str:
    """The default way to place a file by hand: fetch ``url`` elsewhere and save it as ``dest``."""
    return f"to place it by hand, download {url} on a machine with network and save it as {dest}"


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
    by_hand: str | None = None,
) -> str:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming after interruptions.

    :param sha256: expected hex digest; a mismatch deletes the part file and raises.
    :param size: expected size in bytes (else the size the server announced is checked).
    :param retries: further attempts after a failed or short transfer, each resuming with ``Range``.
    :param by_hand: where to put the file by hand so the caller finds it (appended to a failed fetch's
        message); default :func:`by_hand_hint`.
    :returns: the sha256 of the downloaded file.
    :raises UnreachableError: the host cannot be reached (no network, unknown host, refused, timed out).
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
    hint = by_hand or by_hand_hint(url, dest)
    last_error: Exception | None = None
    with bar:
        for attempt in range(retries + 1):
            try:
                total = _fetch_once(url, part, bar, timeout)
            except DownloadError as exc:
                raise DownloadError(f"{exc}; {hint}") from exc
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:  # resets, timeouts, short reads
                last_error = exc
                why = _unreachable_reason(exc)
                have = part.stat().st_size if part.exists() else 0
                if why is not None and (have == 0 or attempt == retries):
                    kept = f" (the {have} bytes received so far stay in {part} for a later resume)" if have else ""
                    raise UnreachableError(f"cannot download {url}: no network, or {host_of(url)} cannot be "
                                           f"reached ({why}){kept}; {hint}", url) from None
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
            have = part.stat().st_size if part.exists() else 0
            kept = f", the {have} bytes received stay in {part} for a later resume" if have else ""
            raise DownloadError(f"{url}: failed after {retries + 1} attempts ({last_error}){kept}; {hint}")
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
