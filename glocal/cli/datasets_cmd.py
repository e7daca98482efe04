"""``glocal datasets download NAME``: fetch ROxford5k, RParis6k or the R1M distractors.

Registered by the main app (``datasets`` group) as ``download`` -> :func:`download_command`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from glocal.cli.common import err, out, show_progress

#: where ``glocal datasets download NAME`` puts NAME/ when no destination is given
DEFAULT_DEST = Path("data/datasets")


def download_command(
    name: Annotated[str, typer.Argument(help="roxford5k, rparis6k or r1m.")],
    destination: Annotated[
        Path | None,
        typer.Argument(help="Parent folder; files go to DESTINATION/NAME (default data/datasets)."),
    ] = None,
    dest: Annotated[
        Path | None,
        typer.Option("--dest", help="The same as DESTINATION, as an option."),
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option("--base-url", envvar="GLOCAL_DATASETS_URL",
                     help="Fetch every file from this mirror (BASE_URL/FILENAME) instead of the official hosts."),
    ] = None,
    keep_archives: Annotated[
        bool,
        typer.Option("--keep-archives", help="Keep the tar files after extraction."),
    ] = False,
) -> None:
    """Download a benchmark in the official layout (resumable; sha256 recorded in checksums.json). Without
    network it says so, names the URL and where to put the files by hand."""
    from glocal.errors import BadOptionError
    from glocal.evaluate.download import SOURCES, download_dataset

    if destination is not None and dest is not None and destination != dest:
        raise BadOptionError(f"two destinations given ({destination} and --dest {dest}); give one")
    dest = destination or dest or DEFAULT_DEST

    if name not in SOURCES:
        raise BadOptionError(f"unknown dataset {name!r}; expected one of {', '.join(sorted(SOURCES))}")
    # a failed download is a DownloadError (BadInputError): one line on stderr, exit status 3
    folder = download_dataset(name, dest, base_url=base_url, progress=show_progress(),
                              keep_archives=keep_archives, log=lambda m: err.print(m, highlight=False, soft_wrap=True))
    out.print(f"{name} ready in {folder}", highlight=False)
