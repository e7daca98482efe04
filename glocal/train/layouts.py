"""Two public training-set layouts, parsed into image paths, class names and (for SfM-120k) positive pairs;
:mod:`glocal.train.data` turns them into a :class:`~glocal.train.data.TrainingSet`.

Google Landmarks v2 train CSV (a ``.csv`` whose header has ``landmark_id``)
    Either the full list, header ``id,url,landmark_id`` (``url`` optional, other columns ignored), one image
    per row, or the clean list, header ``landmark_id,images``, one landmark per row with its image ids separated
    by spaces. The image of id ``abc123...`` is ``IMAGES/a/b/c/abc123....jpg`` (the first three characters of the
    id, one folder each); ``IMAGES`` is ``--images``, by default ``train/`` next to the CSV when it exists, else
    the CSV's folder. The class is the landmark id. A header without the needed columns, a row with the wrong
    number of fields, an empty or non-integer ``landmark_id`` or an id that is not 3+ letters and digits is a
    one-line :class:`~glocal.errors.BadInputError` naming the file and the line.

SfM-120k database pickle (a ``.pkl`` holding a dict with ``train`` and ``val``; read with the restricted
unpickler :mod:`glocal.io.safe_pickle`, never ``pickle.load``)
    Each split has ``cids`` (image ids), ``cluster`` (the 3D model of each image), and ``qidxs`` / ``pidxs``
    (positive pairs: image ``qidxs[k]`` matches image ``pidxs[k]``). The image of id ``cid`` is
    ``IMAGES/cid[-2:]/cid[-4:-2]/cid[-6:-4]/cid`` (or the same with ``.jpg`` appended when only that exists);
    ``IMAGES`` is ``--images``, by default ``ims/`` next to the pickle when it exists, else the pickle's folder.
    The class of an image is its cluster; the tuples use the listed pairs as (query, positive) and mine
    negatives from other clusters, as in Radenovic et al. (TPAMI 2019). Only the ``train`` split is read.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from glocal.errors import BadInputError

GLDV2_COLUMNS = ("landmark_id",)


def csv_header(path: Path) -> list[str]:
    """The first row of a CSV file, stripped and lower-cased ([] for an empty file)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            first = next(csv.reader(fh), [])
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such label file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BadInputError(f"{path}:1: cannot be read as CSV text ({exc})") from None
    return [h.strip().lower() for h in first]


def _gldv2_path(root: Path, image_id: str, path: Path, line: int) -> Path:
    if len(image_id) < 3 or not image_id.isascii() or not image_id.isalnum():
        raise BadInputError(f"{path}:{line}: image id {image_id!r} is not 3 or more letters and digits")
    return root / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"


def _landmark(value: str, path: Path, line: int) -> str:
    value = value.strip()
    if not value:
        raise BadInputError(f"{path}:{line}: empty landmark_id")
    try:
        return str(int(value))
    except ValueError:
        raise BadInputError(f"{path}:{line}: landmark_id {value!r} is not an integer") from None


def parse_gldv2_csv(path: str | Path, images: str | Path | None = None) -> tuple[list[Path], list[str | None]]:
    """Image paths and landmark names of a Google Landmarks v2 train CSV (module docstring)."""
    path = Path(path)
    root = Path(images) if images is not None else (
        path.parent / "train" if (path.parent / "train").is_dir() else path.parent)
    files: list[Path] = []
    names: list[str | None] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = csv.reader(fh)
            header = [h.strip().lower() for h in next(rows, [])]
            if "landmark_id" in header and "id" in header:
                clean = False
            elif "landmark_id" in header and "images" in header:
                clean = True
            else:
                raise BadInputError(f"{path}:1: header {','.join(header)!r} is neither Google Landmarks v2 "
                                    "'id,url,landmark_id' nor 'landmark_id,images'")
            li = header.index("landmark_id")
            xi = header.index("images" if clean else "id")
            for line, row in enumerate(rows, start=2):
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise BadInputError(f"{path}:{line}: {len(row)} fields, expected {len(header)} "
                                        f"({','.join(header)})")
                landmark = _landmark(row[li], path, line)
                ids = row[xi].split() if clean else [row[xi].strip()]
                if not ids or not ids[0]:
                    raise BadInputError(f"{path}:{line}: no image id")
                for image_id in ids:
                    files.append(_gldv2_path(root, image_id, path, line))
                    names.append(landmark)
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such label file") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BadInputError(f"{path}: cannot be read as CSV text ({exc})") from None
    if not files:
        raise BadInputError(f"{path}: no rows after the header")
    return files, names


def is_sfm_database(obj: Any) -> bool:
    """Whether an unpickled object looks like the SfM-120k database (a dict with a ``train`` dict of cids)."""
    return isinstance(obj, dict) and isinstance(obj.get("train"), dict) and "cids" in obj["train"]


def _index_list(split: dict, key: str, path: Path, n: int) -> list[int]:
    try:
        values = [int(v) for v in np.asarray(split[key]).ravel()]
    except KeyError:
        raise BadInputError(f"{path}: SfM-120k split 'train' lacks {key!r} (needs cids, cluster, qidxs, "
                            "pidxs)") from None
    except (TypeError, ValueError):
        raise BadInputError(f"{path}: SfM-120k {key!r} is not a list of integers") from None
    bad = [v for v in values if not 0 <= v < n] if key != "cluster" else []
    if bad:
        raise BadInputError(f"{path}: SfM-120k {key!r} has index {bad[0]} outside 0..{n - 1}")
    return values


def _sfm_path(root: Path, cid: str) -> Path:
    p = root / cid[-2:] / cid[-4:-2] / cid[-6:-4] / cid
    if not p.exists() and p.with_name(cid + ".jpg").is_file():
        return p.with_name(cid + ".jpg")
    return p


def parse_sfm(obj: Any, path: str | Path, images: str | Path | None = None, split: str = "train"
              ) -> tuple[list[Path], list[str | None], list[tuple[int, int]]]:
    """Image paths, cluster names and (query, positive) index pairs of an unpickled SfM-120k database."""
    path = Path(path)
    if not is_sfm_database(obj) or not isinstance(obj.get(split), dict):
        raise BadInputError(f"{path}: not an SfM-120k database (a dict with 'train' and 'val', each with cids, "
                            "cluster, qidxs, pidxs)")
    db = obj[split]
    raw = db.get("cids")
    cids = [str(c) for c in raw] if isinstance(raw, (list, tuple, np.ndarray)) else []
    if not cids:
        raise BadInputError(f"{path}: SfM-120k split {split!r} has no cids")
    for k, cid in enumerate(cids):
        if len(cid) < 6 or not all(ch.isalnum() or ch in "_-." for ch in cid) or cid.startswith("."):
            raise BadInputError(f"{path}: SfM-120k cid {k} ({cid!r}) is not 6 or more letters and digits")
    cluster = _index_list(db, "cluster", path, len(cids))
    if len(cluster) != len(cids):
        raise BadInputError(f"{path}: SfM-120k has {len(cluster)} cluster entries for {len(cids)} cids")
    qidxs, pidxs = _index_list(db, "qidxs", path, len(cids)), _index_list(db, "pidxs", path, len(cids))
    if len(qidxs) != len(pidxs):
        raise BadInputError(f"{path}: SfM-120k has {len(qidxs)} qidxs for {len(pidxs)} pidxs")
    root = Path(images) if images is not None else (
        path.parent / "ims" if (path.parent / "ims").is_dir() else path.parent)
    files = [_sfm_path(root, cid) for cid in cids]
    names: list[str | None] = [f"cluster-{c}" for c in cluster]
    pairs = [(q, p) for q, p in zip(qidxs, pidxs) if q != p]
    return files, names, pairs
