"""Ground truth from labels: ``labels.csv`` (``file,label``), every image a query against all the others.

The common case of a custom evaluation needs no hand-written query list: each row names an image (a path
relative to the dataset folder) and its label; every labelled image is a query, the database is every
listed image, the positives of a query are the other images with its label, and the query itself is junk
(it is in the database, finding it proves nothing). A row with an empty label adds a distractor: a
database image that is never a query and never a positive. A query whose label no other image has has no
positives and is left out of the scores (as the revisited protocol does)::

    file,label
    bridge/1.jpg,bridge
    bridge/2.jpg,bridge
    tower/a.jpg,tower
    tower/b.jpg,tower
    street.jpg,

Errors name the file, the line and the image.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from glocal.errors import BadInputError

FILE_COLUMN = "file"
LABEL_COLUMN = "label"


def is_labels_csv(path: Path) -> bool:
    """Whether the CSV at ``path`` has the ``file,label`` header of this format."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError):
        return False
    return {FILE_COLUMN, LABEL_COLUMN} <= {h.strip() for h in header}


def read_labels_csv(path: Path, root: Path, check_files: bool = True) -> tuple[list[str], list[dict[str, Any]]]:
    """The database and the queries (``image``, ``bbox``, ``positives``, ``junk``) of a labels file.

    :param root: the dataset folder the file names are relative to.
    :param check_files: raise when a listed image is not in ``root``.
    :raises BadInputError: a missing column, an image listed twice or not found (file, line and image named).
    """
    rows: list[tuple[int, str, str]] = []
    first_line: dict[str, int] = {}
    try:
        f = open(path, newline="", encoding="utf-8")
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read the labels file ({exc.strerror or exc})") from exc
    with f:
        reader = csv.DictReader(f)
        fields = [h.strip() for h in reader.fieldnames or []]
        if not {FILE_COLUMN, LABEL_COLUMN} <= set(fields):
            raise BadInputError(f"{path}: line 1: the header needs columns '{FILE_COLUMN}' and '{LABEL_COLUMN}'; "
                                f"found {fields}")
        reader.fieldnames = fields
        try:
            for row in reader:
                line = reader.line_num
                name = (row.get(FILE_COLUMN) or "").strip().replace("\\", "/")
                label = (row.get(LABEL_COLUMN) or "").strip()
                if not name:
                    raise BadInputError(f"{path}: line {line}: no file name")
                if name in first_line:
                    raise BadInputError(f"{path}: line {line}: image {name} is listed twice (first on line "
                                        f"{first_line[name]})")
                if check_files and not (root / name).is_file():
                    raise BadInputError(f"{path}: line {line}: unknown image {name}: no such file in {root}")
                first_line[name] = line
                rows.append((line, name, label))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise BadInputError(f"{path}: line {reader.line_num}: not readable CSV ({exc})") from exc
    if not any(label for _, _, label in rows):
        raise BadInputError(f"{path}: no labelled images (every row has an empty label)")
    by_label: dict[str, list[str]] = {}
    for _, name, label in rows:
        if label:
            by_label.setdefault(label, []).append(name)
    database = [name for _, name, _ in rows]
    queries = [{"image": name, "bbox": None, "positives": [n for n in by_label[label] if n != name],
                "junk": [name], "line": line}
               for line, name, label in rows if label]
    return database, queries
