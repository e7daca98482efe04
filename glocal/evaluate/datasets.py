"""Retrieval datasets: revisited Oxford / Paris, distractor sets (R1M) and user folders.

Revisited layout (as the official release): ``root/jpg/<name>.jpg`` and a ground-truth pickle
``gnd_<name>.pkl`` with ``imlist``, ``qimlist`` and ``gnd`` (per query ``easy``, ``hard``, ``junk``,
``bbx``). Query ``i`` is ``jpg/{qimlist[i]}.jpg``, database image ``j`` is ``jpg/{imlist[j]}.jpg``.

Custom layout (for your own photos): a folder of images and a ground-truth file, JSON or CSV; image
names are paths relative to the folder.

JSON (``groundtruth.json``)::

    {
      "database": ["a.jpg", "sub/b.jpg"],          # optional; default: every image that is not a query
      "queries": [
        {"image": "q1.jpg", "bbox": [x1, y1, x2, y2],   # bbox optional (pixels of the original image)
         "positives": ["a.jpg"], "junk": ["sub/b.jpg"]}  # junk optional
      ]
    }

CSV (``groundtruth.csv``), one row per query, header required; ``junk`` and the box columns optional;
lists are separated by ``;``; an empty box means no crop::

    query,positives,junk,x1,y1,x2,y2
    q1.jpg,a.jpg;c.jpg,sub/b.jpg,10,20,300,400

Labels (``labels.csv``, header ``file,label``): every labelled image is a query against all the
others, positives are the images with the same label (:mod:`glocal.evaluate.labels_gnd`).

The custom ground truth becomes ``gnd = [{"ok": [...], "junk": [...]}]`` (database indices) and is
scored as one setup named ``all``.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from glocal.errors import BadInputError
from glocal.evaluate.labels_gnd import is_labels_csv, read_labels_csv
from glocal.io.images import IMAGE_SUFFIXES
from glocal.io.safe_pickle import safe_load_pickle

Box = tuple[float, float, float, float]
REVISITED_NAMES = ("roxford5k", "rparis6k")
R1M_LIST = "revisitop1m.txt"


class DatasetError(BadInputError):
    """A dataset folder or ground-truth file is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class RetrievalDataset:
    """A query set, a database and the ground truth that links them.

    :param name: dataset name (``roxford5k``, ``rparis6k``, ``custom``, with ``+...`` for distractors).
    :param root: folder the images were found in.
    :param db_paths: database image files, in ground-truth index order.
    :param db_names: database image names (unique), same order.
    :param query_paths: query image files.
    :param query_names: query names.
    :param query_boxes: per-query crop (x1, y1, x2, y2) in original pixels (None for no crop of that
        query), or None for the whole list when queries are not cropped.
    :param gnd: raw ground truth, one dict per query: ``easy``/``hard``/``junk`` (revisited) or
        ``ok``/``junk`` (custom), database indices.
    :param n_distractors: how many trailing database images are appended distractors.
    """

    name: str
    root: Path
    db_paths: list[Path]
    db_names: list[str]
    query_paths: list[Path]
    query_names: list[str]
    query_boxes: list[Box | None] | None
    gnd: list[dict[str, Any]]
    n_distractors: int = 0

    @property
    def n_database(self) -> int:
        return len(self.db_paths)

    @property
    def n_queries(self) -> int:
        return len(self.query_paths)

    def query_box(self, i: int) -> Box | None:
        """Crop box of query ``i``, or None when not cropping."""
        return None if self.query_boxes is None else self.query_boxes[i]


def _missing_files(paths: Sequence[Path], what: str, where: Path) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p.name) for p in missing[:5])
        raise DatasetError(f"{where}: {len(missing)} of {len(paths)} {what} images are missing (e.g. {shown})")


def find_gnd(name: str, root: Path) -> Path:
    """Locate the ground-truth pickle of ``name`` in ``root`` or ``root.parent``.

    Preference: ``gnd_{name}.pkl`` in root, then in the parent; then ``gnd_{name}*.pkl`` (e.g. the
    ``_subset`` files) in root, then in the parent; then the only ``gnd_*.pkl`` in root.
    """
    root = Path(root)
    folders = [root, root.parent]
    for folder in folders:
        exact = folder / f"gnd_{name}.pkl"
        if exact.is_file():
            return exact
    for folder in folders:
        matches = sorted(folder.glob(f"gnd_{name}*.pkl"))
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise DatasetError(f"{folder}: several ground-truth files match {name}: "
                               f"{[m.name for m in matches]}; pass gnd_path")
    anything = sorted(root.glob("gnd_*.pkl"))
    if len(anything) == 1:
        return anything[0]
    raise DatasetError(f"no ground truth gnd_{name}.pkl (or gnd_{name}*.pkl) in {root} or {root.parent}; "
                       f"found {[a.name for a in anything]} in {root}; pass gnd_path")


def _index_list(value: Any, n_db: int, where: str) -> list[int]:
    arr = np.asarray(value if value is not None else [], dtype=np.int64).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= n_db):
        raise DatasetError(f"{where}: index out of range [0, {n_db}) (min {arr.min()}, max {arr.max()})")
    return [int(v) for v in arr]


def load_revisited(
    name: str,
    root: str | Path,
    crop: bool = True,
    gnd_path: str | Path | None = None,
    check_files: bool = True,
) -> RetrievalDataset:
    """Load ROxford5k / RParis6k (or a revisitop-style subset) from the official folder layout.

    :param name: ``roxford5k`` or ``rparis6k`` (any name works when ``gnd_path`` is given).
    :param root: the dataset folder holding ``jpg/``.
    :param crop: crop queries to ``gnd[i]['bbx']`` (the standard setting); False keeps full images.
    :param gnd_path: explicit ground-truth pickle; by default see :func:`find_gnd`.
    :param check_files: raise if any listed image is missing from ``root/jpg``.
    :raises DatasetError: missing folder/files or malformed ground truth, naming the file.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder does not exist")
    path = Path(gnd_path) if gnd_path is not None else find_gnd(name, root)
    if not path.is_file():
        raise DatasetError(f"{path}: ground-truth file does not exist")
    cfg = safe_load_pickle(path)
    if not isinstance(cfg, dict) or not {"imlist", "qimlist", "gnd"} <= set(cfg):
        keys = sorted(cfg) if isinstance(cfg, dict) else type(cfg).__name__
        raise DatasetError(f"{path}: expected a dict with imlist, qimlist, gnd; found {keys}")
    imlist, qimlist, raw = list(cfg["imlist"]), list(cfg["qimlist"]), list(cfg["gnd"])
    if len(raw) != len(qimlist):
        raise DatasetError(f"{path}: {len(qimlist)} query names but {len(raw)} ground-truth entries")
    n_db = len(imlist)
    gnd: list[dict[str, Any]] = []
    boxes: list[Box | None] = []
    for i, q in enumerate(raw):
        where = f"{path}: query {i} ({qimlist[i]})"
        if not isinstance(q, dict) or "easy" not in q or "hard" not in q:
            raise DatasetError(f"{where}: expected a dict with easy, hard, junk")
        entry: dict[str, Any] = {k: _index_list(q.get(k), n_db, f"{where} '{k}'") for k in ("easy", "hard", "junk")}
        bbx = q.get("bbx")
        if bbx is not None:
            b = [float(v) for v in np.asarray(bbx, dtype=np.float64).reshape(-1)]
            if len(b) != 4 or b[2] <= b[0] or b[3] <= b[1]:
                raise DatasetError(f"{where}: bbx must be x1, y1, x2, y2 with x2 > x1, y2 > y1; got {bbx}")
            entry["bbx"] = b
            boxes.append((b[0], b[1], b[2], b[3]))
        else:
            boxes.append(None)
        gnd.append(entry)
    jpg = root / "jpg"
    db_paths = [jpg / f"{n}.jpg" for n in imlist]
    query_paths = [jpg / f"{n}.jpg" for n in qimlist]
    if check_files:
        if not jpg.is_dir():
            raise DatasetError(f"{jpg}: image folder does not exist (expected {name} images as jpg/<name>.jpg)")
        _missing_files(db_paths, "database", jpg)
        _missing_files(query_paths, "query", jpg)
    return RetrievalDataset(
        name=name, root=root, db_paths=db_paths, db_names=[str(n) for n in imlist],
        query_paths=query_paths, query_names=[str(n) for n in qimlist],
        query_boxes=boxes if crop else None, gnd=gnd,
    )


def _image_name(path: Path, folder: Path) -> str:
    return path.relative_to(folder).with_suffix("").as_posix()


def add_distractors(
    dataset: RetrievalDataset, folder: str | Path, names: Sequence[str] | None = None, suffix: str = "distractors"
) -> RetrievalDataset:
    """Append guaranteed negatives to the database; returns a new dataset.

    The original database keeps indices ``0..n-1``, so the ground truth is unchanged.

    :param folder: image folder (searched recursively), or an R1M root holding ``revisitop1m.txt``.
    :param names: optional explicit file list relative to ``folder`` (as in ``revisitop1m.txt``).
    :param suffix: appended to the dataset name (``roxford5k+distractors``, ``roxford5k+1m``).
    :raises DatasetError: empty folder, missing listed files, or a name already in the database.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: distractor folder does not exist")
    if names is None and (folder / R1M_LIST).is_file():
        return load_r1m(dataset, folder)
    if names is not None:
        paths = [folder / n for n in names]
        _missing_files(paths, "distractor", folder)
    else:
        paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DatasetError(f"{folder}: no images found to use as distractors")
    new_names = [_image_name(p, folder) for p in paths]
    taken = set(dataset.db_names)
    clash = [n for n in new_names if n in taken]
    if clash:
        raise DatasetError(f"{folder}: {len(clash)} distractor names are already database images "
                           f"(e.g. {clash[:3]}); distractors must be different images")
    if len(set(new_names)) != len(new_names):
        raise DatasetError(f"{folder}: distractor names are not unique (same name, different suffix?)")
    return replace(
        dataset,
        name=f"{dataset.name}+{suffix}",
        db_paths=dataset.db_paths + paths,
        db_names=dataset.db_names + new_names,
        n_distractors=dataset.n_distractors + len(paths),
    )


def load_r1m(dataset: RetrievalDataset, root: str | Path) -> RetrievalDataset:
    """Append the revisitop 1M distractors: ``root/revisitop1m.txt`` lists files under ``root/jpg/``.

    Lines without an image suffix get ``.jpg`` appended.
    """
    root = Path(root)
    listing = root / R1M_LIST
    if not listing.is_file():
        raise DatasetError(f"{listing}: R1M image list does not exist")
    names = []
    for line in listing.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            names.append(line if Path(line).suffix.lower() in IMAGE_SUFFIXES else f"{line}.jpg")
    if not names:
        raise DatasetError(f"{listing}: the list is empty")
    return add_distractors(dataset, root / "jpg", names=names, suffix="1m")


# ---------------------------------------------------------------------------------------------- custom
def _split_list(cell: str | None) -> list[str]:
    return [s.strip() for s in (cell or "").split(";") if s.strip()]


def _read_custom_json(path: Path) -> tuple[list[str] | None, list[dict[str, Any]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("queries"), list):
        raise DatasetError(f"{path}: expected an object with a 'queries' list")
    database = data.get("database")
    if database is not None and not (isinstance(database, list) and all(isinstance(d, str) for d in database)):
        raise DatasetError(f"{path}: 'database' must be a list of image names")
    queries = []
    for i, q in enumerate(data["queries"]):
        if not isinstance(q, dict) or not isinstance(q.get("image"), str):
            raise DatasetError(f"{path}: query {i} needs an 'image' name")
        if not isinstance(q.get("positives", []), list) or not isinstance(q.get("junk", []), list):
            raise DatasetError(f"{path}: query {i} ({q['image']}): 'positives' and 'junk' must be lists of names")
        queries.append({"image": q["image"], "bbox": q.get("bbox"),
                        "positives": list(q.get("positives", [])), "junk": list(q.get("junk", []))})
    return database, queries


def _read_custom_csv(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or [])
        if not {"query", "positives"} <= fields:
            raise DatasetError(f"{path}: the CSV header needs columns 'query' and 'positives'; found {sorted(fields)}")
        queries = []
        for line, row in enumerate(reader, start=2):
            coords = [(row.get(k) or "").strip() for k in ("x1", "y1", "x2", "y2")]
            bbox: list[float] | None = None
            if any(coords):
                try:
                    bbox = [float(c) for c in coords]
                except ValueError as exc:
                    raise DatasetError(f"{path}: line {line}: box needs four numbers x1,y1,x2,y2; got {coords}") from exc
            queries.append({"image": (row["query"] or "").strip(), "bbox": bbox, "line": line,
                            "positives": _split_list(row["positives"]), "junk": _split_list(row.get("junk"))})
    return queries


def load_custom(root: str | Path, gt_path: str | Path | None = None, crop: bool = True,
                check_files: bool = True) -> RetrievalDataset:
    """Load a folder of your own photos with a JSON or CSV ground truth (format in the module docstring).

    :param root: the image folder; image names are relative to it.
    :param gt_path: ground-truth file; default ``root/groundtruth.json``, ``root/groundtruth.csv`` or
        ``root/labels.csv``.
    :param crop: crop queries to their ``bbox`` when given.
    :raises DatasetError: unknown names, duplicates, bad boxes or missing files, naming the file.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder does not exist")
    if gt_path is None:
        options = [root / "groundtruth.json", root / "groundtruth.csv", root / "labels.csv"]
        found = [o for o in options if o.is_file()]
        if not found:
            raise DatasetError(f"{root}: no groundtruth.json, groundtruth.csv or labels.csv; pass the ground-truth file")
        gt_path = found[0]
    path = Path(gt_path)
    if not path.is_file():
        raise DatasetError(f"{path}: ground-truth file does not exist")
    database: list[str] | None = None
    if path.suffix.lower() == ".csv" and is_labels_csv(path):
        database, queries = read_labels_csv(path, root, check_files=check_files)
    elif path.suffix.lower() == ".csv":
        queries = _read_custom_csv(path)
    else:
        database, queries = _read_custom_json(path)
    if not queries:
        raise DatasetError(f"{path}: no queries listed")
    query_names = [q["image"] for q in queries]
    if database is None:
        qset = set(query_names)
        database = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                          if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and p.relative_to(root).as_posix() not in qset)
    if len(set(database)) != len(database):
        raise DatasetError(f"{path}: the database lists an image twice")
    index = {n: i for i, n in enumerate(database)}
    gnd: list[dict[str, Any]] = []
    boxes: list[Box | None] = []
    for q in queries:
        lists = {}
        for key, out in (("positives", "ok"), ("junk", "junk")):
            unknown = [n for n in q[key] if n not in index]
            if unknown:
                line = f"line {q['line']}: " if q.get("line") else ""
                raise DatasetError(f"{path}: {line}query {q['image']}: unknown image {', '.join(unknown[:3])} in "
                                   f"{key} (not a database image)")
            lists[out] = [index[n] for n in q[key]]
        gnd.append(lists)
        b = q["bbox"]
        if b is not None:
            if len(b) != 4 or not all(isinstance(v, (int, float)) for v in b) or b[2] <= b[0] or b[3] <= b[1]:
                raise DatasetError(f"{path}: query {q['image']}: bbox must be [x1, y1, x2, y2] with x2 > x1, y2 > y1; got {b}")
            boxes.append((float(b[0]), float(b[1]), float(b[2]), float(b[3])))
        else:
            boxes.append(None)
    db_paths = [root / n for n in database]
    query_paths = [root / n for n in query_names]
    if check_files:
        _missing_files(db_paths, "database", root)
        _missing_files(query_paths, "query", root)
    return RetrievalDataset(
        name="custom", root=root, db_paths=db_paths, db_names=list(database),
        query_paths=query_paths, query_names=query_names,
        query_boxes=boxes if crop else None, gnd=gnd,
    )


def load_dataset(name: str, root: str | Path, crop: bool = True, gnd_path: str | Path | None = None) -> RetrievalDataset:
    """Dispatch by name: ``roxford5k`` / ``rparis6k`` -> :func:`load_revisited`, ``custom`` -> :func:`load_custom`."""
    if name in REVISITED_NAMES:
        return load_revisited(name, root, crop=crop, gnd_path=gnd_path)
    if name == "custom":
        return load_custom(root, gt_path=gnd_path, crop=crop)
    raise DatasetError(f"unknown dataset {name!r}; expected one of {REVISITED_NAMES + ('custom',)}")
