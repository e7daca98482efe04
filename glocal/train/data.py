"""Training data for retrieval fine-tuning: images with class labels, whatever the layout on disk.

Layouts (:func:`read_training_set` picks one from what ``--data`` is):

folder per class (a folder)
    ``DATA/<class>/<image>``: every sub-folder is a class, its images (searched recursively) its members.
    Images directly in ``DATA`` belong to no class (distractors: used as negatives only).
``labels.csv`` (a ``.csv`` file)
    header ``file,label``; ``file`` relative to the CSV's folder (or ``--images``), ``label`` any
    non-empty text. An empty label makes the image a distractor. A missing header column, a row with the wrong
    number of fields or an empty file name is a one-line :class:`~glocal.errors.BadInputError` naming the
    file and the line.
revisited ground truth (a ``.pkl`` file, read with the restricted unpickler)
    ``gnd_<set>.pkl`` with ``imlist``, ``qimlist`` and per query ``easy``, ``hard``, ``junk``; images are
    ``<images>/<name>.jpg`` (default images folder: ``jpg/`` next to the file, else the file's folder). Queries
    whose positives overlap are one landmark (a class): its queries plus their easy and hard images; its
    junk images are neither positives nor negatives of it; the other database images are distractors.
Google Landmarks v2 train CSV (a ``.csv`` whose header has ``landmark_id``) and SfM-120k database (a ``.pkl``
    with ``train`` / ``val``): :mod:`glocal.train.layouts`. SfM-120k gives positive *pairs*
    (:attr:`TrainingSet.pairs`), the other layouts classes whose images are all positives of each other.

Missing or unreadable files are never a crash: they are left out and listed in
:attr:`TrainingSet.problems` ``(path, reason)``. Classes with a single image (no positive pair) are listed in
:attr:`TrainingSet.singletons` and give no anchors.
"""
from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from glocal.errors import BadInputError
from glocal.io.images import list_images
from glocal.train.layouts import csv_header, is_sfm_database, parse_gldv2_csv, parse_sfm

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class TrainingSet:
    """Images and their classes.

    :param files: image paths.
    :param labels: (n,) int class of each image, -1: no class (a distractor, a negative for every class).
    :param class_names: name of class ``c`` at position ``c``.
    :param ignore: class -> images that are neither positives nor negatives of it (revisited junk).
    :param problems: ``(path, reason)`` of every file left out.
    :param singletons: names of classes with one image.
    :param source: what was read (for the model card).
    :param pairs: (P, 2) image indices (query, positive) when the layout lists positive pairs (SfM-120k); None:
        every two images of a class are a positive pair.
    """

    files: list[Path]
    labels: npt.NDArray[np.int64]
    class_names: list[str]
    ignore: dict[int, frozenset[int]] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)
    singletons: list[str] = field(default_factory=list)
    source: str = ""
    pairs: npt.NDArray[np.int64] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def anchors(self) -> npt.NDArray[np.int64]:
        """Images that have at least one positive (another image of their class; with pairs: the queries)."""
        if self.pairs is not None:
            return np.unique(self.pairs[:, 0]) if len(self.pairs) else np.zeros(0, dtype=np.int64)
        counts = np.bincount(self.labels[self.labels >= 0], minlength=len(self.class_names))
        return np.flatnonzero((self.labels >= 0) & (counts[np.maximum(self.labels, 0)] >= 2))

    def subset(self, keep: Sequence[int] | npt.NDArray[np.int64]) -> TrainingSet:
        """The images at ``keep`` (classes, names and ignore sets renumbered to the kept images)."""
        keep = np.asarray(keep, dtype=np.int64)
        where = {int(old): new for new, old in enumerate(keep)}
        ignore = {c: frozenset(where[i] for i in s if i in where) for c, s in self.ignore.items()}
        pairs = None
        if self.pairs is not None:
            pairs = np.array([(where[int(q)], where[int(p)]) for q, p in self.pairs
                              if int(q) in where and int(p) in where], dtype=np.int64).reshape(-1, 2)
        return TrainingSet([self.files[i] for i in keep], self.labels[keep].copy(), list(self.class_names),
                           {c: s for c, s in ignore.items() if s}, list(self.problems), list(self.singletons),
                           self.source, pairs)

    def summary(self) -> dict:
        """Counts for logs and the model card."""
        out = {"source": self.source, "images": len(self.files), "classes": int(len(set(self.labels[self.labels >= 0]))),
               "anchors": int(len(self.anchors())), "distractors": int((self.labels < 0).sum()),
               "skipped": len(self.problems), "single_image_classes": len(self.singletons)}
        if self.pairs is not None:
            out["pairs"] = int(len(self.pairs))
        return out


def _finish(files: list[Path], names: list[str | None], source: str, problems: list[tuple[str, str]],
            ignore_by_name: dict[str, set[int]] | None = None,
            pairs: list[tuple[int, int]] | None = None) -> TrainingSet:
    """Drop missing files, number the classes, list the single-image ones (``pairs``: indices into ``files``,
    those with a missing image dropped)."""
    kept_files, kept_names, old_index = [], [], []
    for i, (f, n) in enumerate(zip(files, names)):
        if not f.is_file():
            problems.append((str(f), "missing" if not f.exists() else "not a file"))
            continue
        kept_files.append(f)
        kept_names.append(n)
        old_index.append(i)
    classes = sorted({n for n in kept_names if n is not None})
    number = {n: c for c, n in enumerate(classes)}
    labels = np.array([number[n] if n is not None else -1 for n in kept_names], dtype=np.int64)
    counts = np.bincount(labels[labels >= 0], minlength=len(classes))
    singletons = [classes[c] for c in np.flatnonzero(counts == 1)]
    new = {old: new for new, old in enumerate(old_index)}
    ignore = {}
    for name, olds in (ignore_by_name or {}).items():
        if name in number:
            kept = frozenset(new[o] for o in olds if o in new)
            if kept:
                ignore[number[name]] = kept
    kept_pairs = None
    if pairs is not None:
        kept_pairs = np.array([(new[q], new[p]) for q, p in pairs if q in new and p in new],
                              dtype=np.int64).reshape(-1, 2)
    return TrainingSet(kept_files, labels, classes, ignore, problems, singletons, source, kept_pairs)


def read_folder_per_class(root: str | Path) -> TrainingSet:
    """``root/<class>/...images``; images directly in ``root`` are distractors."""
    root = Path(root)
    if not root.is_dir():
        raise BadInputError(f"{root}: not a folder")
    skipped: list[tuple[Path, str]] = []
    files = list_images([root], skipped=skipped)
    names: list[str | None] = []
    for f in files:
        rel = f.relative_to(root).parts
        names.append(rel[0] if len(rel) > 1 else None)
    if not files:
        raise BadInputError(f"{root}: holds no images (expected one sub-folder of images per class)")
    return _finish(files, names, f"folder per class {root}", [(str(p), r) for p, r in skipped])


def read_labels_csv(path: str | Path, images: str | Path | None = None) -> TrainingSet:
    """A ``file,label`` CSV (see the module docstring); ``images``: the folder file names are relative to
    (default: the CSV's folder)."""
    path = Path(path)
    base = Path(images) if images is not None else path.parent
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such label file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path}: cannot be read as UTF-8 text ({exc})") from None
    rows = csv.reader(text.splitlines())
    header = next(rows, None)
    if header is None:
        raise BadInputError(f"{path}:1: empty label file (expected the header 'file,label')")
    header = [h.strip().lower() for h in header]
    if "file" not in header or "label" not in header:
        raise BadInputError(f"{path}:1: header {','.join(header)!r} lacks the column 'file' or 'label' "
                            "(expected 'file,label')")
    fi, li = header.index("file"), header.index("label")
    files: list[Path] = []
    names: list[str | None] = []
    for line, row in enumerate(rows, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise BadInputError(f"{path}:{line}: {len(row)} fields, expected {len(header)} ({','.join(header)})")
        name = row[fi].strip()
        if not name:
            raise BadInputError(f"{path}:{line}: empty file name")
        files.append(base / name)
        names.append(row[li].strip() or None)
    if not files:
        raise BadInputError(f"{path}: no rows after the header")
    return _finish(files, names, f"labels.csv {path}", [])


def _landmarks(positives: list[set[int]]) -> list[int]:
    """Union-find: queries whose positive sets share an image get one landmark number (the smallest query)."""
    parent = list(range(len(positives)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[int, int] = {}
    for q, pos in enumerate(positives):
        for img in pos:
            if img in owner:
                a, b = root(owner[img]), root(q)
                parent[max(a, b)] = min(a, b)
            else:
                owner[img] = q
    return [root(q) for q in range(len(positives))]


def read_gldv2_csv(path: str | Path, images: str | Path | None = None) -> TrainingSet:
    """A Google Landmarks v2 train CSV (:mod:`glocal.train.layouts`)."""
    files, names = parse_gldv2_csv(path, images)
    return _finish(files, names, f"Google Landmarks v2 csv {path}", [])


def read_sfm(path: str | Path, images: str | Path | None = None, database: object = None) -> TrainingSet:
    """The ``train`` split of an SfM-120k database pickle (:mod:`glocal.train.layouts`), read with the
    restricted unpickler (``database``: the already unpickled object)."""
    from glocal.io.safe_pickle import safe_load_pickle

    path = Path(path)
    if database is None:
        if not path.is_file():
            raise BadInputError(f"{path}: no such SfM-120k database file")
        database = safe_load_pickle(path)
    files, names, pairs = parse_sfm(database, path, images)
    return _finish(files, names, f"SfM-120k database {path}", [], pairs=pairs)


def read_gnd(path: str | Path, images: str | Path | None = None, suffix: str = ".jpg",
             gnd: object = None) -> TrainingSet:
    """Classes from a revisited ground-truth pickle (module docstring), read with the restricted unpickler
    (``gnd``: the already unpickled object)."""
    from glocal.io.safe_pickle import safe_load_pickle

    path = Path(path)
    if gnd is None and not path.is_file():
        raise BadInputError(f"{path}: no such ground-truth file")
    if images is None:
        images = path.parent / "jpg" if (path.parent / "jpg").is_dir() else path.parent
    images = Path(images)
    if gnd is None:
        gnd = safe_load_pickle(path)
    if not isinstance(gnd, dict) or not {"imlist", "qimlist", "gnd"} <= set(gnd):
        raise BadInputError(f"{path}: not a revisited ground truth (needs imlist, qimlist and gnd)")
    imlist, qimlist, entries = list(gnd["imlist"]), list(gnd["qimlist"]), list(gnd["gnd"])
    if len(entries) != len(qimlist):
        raise BadInputError(f"{path}: {len(entries)} gnd entries for {len(qimlist)} queries")
    positives, junk = [], []
    for q, e in enumerate(entries):
        try:
            pos = {int(i) for k in ("easy", "hard") for i in np.atleast_1d(e.get(k, []))}
            jnk = {int(i) for i in np.atleast_1d(e.get("junk", []))}
        except (AttributeError, TypeError, ValueError):
            raise BadInputError(f"{path}: gnd entry {q} is not a mapping of index lists") from None
        if any(not 0 <= i < len(imlist) for i in pos | jnk):
            raise BadInputError(f"{path}: gnd entry {q} names an image index outside imlist (0..{len(imlist) - 1})")
        positives.append(pos)
        junk.append(jnk)
    landmark = _landmarks(positives)
    name_of = {q: f"landmark-{qimlist[q]}" for q in set(landmark)}
    db_label: dict[int, str] = {}
    ignore: dict[str, set[int]] = {}
    for q, pos in enumerate(positives):
        for i in pos:
            db_label[i] = name_of[landmark[q]]
    for q, jnk in enumerate(junk):  # indices into imlist = positions in files (the database comes first)
        ignore.setdefault(name_of[landmark[q]], set()).update(jnk)
    # images: the database first, then the queries (a query also in the database is one image)
    files = [images / f"{n}{suffix}" for n in imlist]
    names: list[str | None] = [db_label.get(i) for i in range(len(imlist))]
    position = {n: i for i, n in enumerate(imlist)}
    for q, n in enumerate(qimlist):
        if n in position:
            names[position[n]] = name_of[landmark[q]]
        else:
            files.append(images / f"{n}{suffix}")
            names.append(name_of[landmark[q]])
    return _finish(files, names, f"revisited gnd {path}", [], ignore)


def read_training_set(data: str | Path, images: str | Path | None = None) -> TrainingSet:
    """The layout ``data`` is (module docstring): a folder, a ``.csv`` (``file,label`` or Google Landmarks v2)
    or a ``.pkl`` (revisited gnd or SfM-120k)."""
    from glocal.io.safe_pickle import safe_load_pickle

    data = Path(data)
    if data.is_dir():
        return read_folder_per_class(data)
    if data.suffix.lower() == ".csv":
        if "landmark_id" in csv_header(data):
            return read_gldv2_csv(data, images)
        return read_labels_csv(data, images)
    if data.suffix.lower() == ".pkl" and data.is_file():
        loaded = safe_load_pickle(data)
        if is_sfm_database(loaded):
            return read_sfm(data, images, database=loaded)
        return read_gnd(data, images, gnd=loaded)
    if not data.exists():
        raise BadInputError(f"{data}: no such file or folder")
    raise BadInputError(f"{data}: unknown training data layout (a folder per class, a labels .csv with "
                        "file,label or a Google Landmarks v2 train .csv, a revisited gnd .pkl or an SfM-120k .pkl)")


def split_classes(data: TrainingSet, eval_fraction: float, seed: int) -> tuple[TrainingSet, TrainingSet]:
    """(train, held out): whole classes go to the held-out set (about ``eval_fraction`` of the classes with
    two or more images, at least one when the fraction is > 0 and two such classes exist); distractors go to
    both (negatives in training, distractors in evaluation). No image is in both with a class."""
    counts = np.bincount(data.labels[data.labels >= 0], minlength=len(data.class_names))
    usable = np.flatnonzero(counts >= 2)
    n_eval = int(round(eval_fraction * len(usable)))
    if eval_fraction > 0 and len(usable) >= 2:
        n_eval = min(max(n_eval, 1), len(usable) - 1)
    else:
        n_eval = 0
    held = set(np.random.default_rng(seed).permutation(usable)[:n_eval].tolist())
    is_held = np.array([int(c) in held for c in data.labels], dtype=bool)
    distractor = data.labels < 0
    train = data.subset(np.flatnonzero(~is_held))
    held_out = data.subset(np.flatnonzero(is_held | distractor))
    return train, held_out
