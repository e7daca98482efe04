"""The retrieval sets the default is chosen and reported on (``benchmarks/default_selection.py``,
``benchmarks/bruteforce_sift.py``), each loaded as a :class:`glocal.evaluate.RetrievalDataset`.

Sets (names as the tables print them):

- ``roxf``, ``rpar``: the mini Revisited Oxford / Paris subsets in ``../shared/data/mini-revisitop``,
  queries cropped to their box (revisited protocol);
- ``roxf+d``, ``rpar+d``: the same with every image of the other city appended as distractors (guaranteed
  negatives; the ground truth is unchanged);
- ``affine``: a tiny revisited-format set built from the Oxford affine-covariant images in
  ``../shared/data/oxford-affine`` (:func:`build_affine_set`);
- ``demo``: the set ``glocal demo`` builds from photos scikit-image ships (``glocal.demo.synthetic``).

``GROUPS`` ties a set to its ``+d`` twin: leave-one-set-out holds out a whole group, so a twin never helps
choose the setting reported on its sibling. Nothing here is written into the repository: the affine and demo
sets are written into a cache folder.
"""
from __future__ import annotations

import hashlib
import pickle
import shutil
from pathlib import Path

import cv2

from glocal.evaluate.datasets import RetrievalDataset, add_distractors, load_revisited

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = ("roxf", "roxf+d", "rpar", "rpar+d", "affine", "demo")
GROUPS = {"roxf": "roxf", "roxf+d": "roxf", "rpar": "rpar", "rpar+d": "rpar", "affine": "affine", "demo": "demo"}
CITY = {"roxf": "roxford5k", "rpar": "rparis6k"}
OTHER = {"roxf": "rpar", "rpar": "roxf"}

#: affine set: scene -> (query, [(image, difficulty)]); paths relative to ``oxford-affine/``.
#: Graffiti 2-3 are mild viewpoint changes (easy), 4-6 strong ones (hard); the leuven and aero pairs are
#: strong viewpoint changes with partial overlap (hard); box_in_scene holds the box small, rotated, in clutter.
AFFINE_SCENES: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "graffiti": ("graf_affnet/img1.png", [("graf_affnet/img2.png", "easy"), ("graf_affnet/img3.png", "easy"),
                                          ("graf_affnet/img4.png", "hard"), ("graf_affnet/img5.png", "hard"),
                                          ("graf_affnet/img6.png", "hard")]),
    "leuven": ("opencv_doc_samples/leuvenA.jpg", [("opencv_doc_samples/leuvenB.jpg", "hard")]),
    "aero": ("opencv_doc_samples/aero1.jpg", [("opencv_doc_samples/aero3.jpg", "hard")]),
    "box": ("opencv_doc_samples/box.png", [("opencv_doc_samples/box_in_scene.png", "hard")]),
}
#: images of no scene above: negatives for every query
AFFINE_DISTRACTORS = ("opencv_doc_samples/building.jpg",)
# opencv_doc_samples/graf1.png and graf3.png are byte-identical in pixels to graf_affnet/img1 and img3: left out


def build_affine_set(source: Path, out: Path) -> Path:
    """Write the affine set into ``out`` (``jpg/<name>.jpg`` and ``gnd_affine.pkl``, revisited format) and
    return the pickle's path. Each scene is a "landmark" whose query is its first image (whole image as the
    box); its other images are its easy / hard positives; every other image is a negative. Images are
    re-encoded as JPEG quality 95 so every set is read the same way."""
    jpg = out / "jpg"
    if out.exists():
        shutil.rmtree(out)
    jpg.mkdir(parents=True)

    def put(rel: str) -> tuple[str, tuple[int, int]]:
        img = cv2.imread(str(source / rel), cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(f"{source / rel}: cannot read (is ../shared/data/oxford-affine there?)")
        name = Path(rel).parent.name + "_" + Path(rel).stem
        cv2.imwrite(str(jpg / f"{name}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        return name, (img.shape[1], img.shape[0])

    imlist: list[str] = []
    owner: list[tuple[str, str]] = []
    for scene, (_, images) in AFFINE_SCENES.items():
        for rel, difficulty in images:
            imlist.append(put(rel)[0])
            owner.append((scene, difficulty))
    for rel in AFFINE_DISTRACTORS:
        imlist.append(put(rel)[0])
        owner.append(("", "negative"))
    qimlist, gnd = [], []
    for scene, (query, _) in AFFINE_SCENES.items():
        name, (w, h) = put(query)
        qimlist.append(name)
        gnd.append({
            "bbx": [0.0, 0.0, float(w), float(h)],
            "easy": [i for i, (s, d) in enumerate(owner) if s == scene and d == "easy"],
            "hard": [i for i, (s, d) in enumerate(owner) if s == scene and d == "hard"],
            "junk": [],
        })
    path = out / "gnd_affine.pkl"
    with open(path, "wb") as f:
        pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, f)
    return path


def demo_set(cache: Path, seed: int = 0) -> RetrievalDataset:
    """The demo benchmark as ``glocal demo`` builds it with ``seed``, written once per version of its code
    (the folder name carries a digest of ``glocal/demo/synthetic.py``)."""
    import glocal.demo.synthetic as synthetic

    digest = hashlib.sha1(Path(synthetic.__file__).read_bytes()).hexdigest()[:10]
    out = cache / f"demo_set_{digest}_seed{seed}"
    if not (out / "gnd_demo.pkl").is_file():
        if out.exists():
            shutil.rmtree(out)
        synthetic.make_benchmark(out, seed=seed)
    return load_revisited("demo", out, gnd_path=out / "gnd_demo.pkl")


def load_set(name: str, cache: Path, data: Path = DATA) -> RetrievalDataset:
    """One set by name (see the module docstring); the affine and demo sets are (re)built into ``cache``."""
    base = name.removesuffix("+d")
    if base in CITY:
        mini = data / "mini-revisitop"
        ds = load_revisited(CITY[base], mini / CITY[base], gnd_path=mini / f"gnd_{CITY[base]}_subset.pkl")
        if name.endswith("+d"):
            ds = add_distractors(ds, mini / CITY[OTHER[base]] / "jpg")
        return ds
    if name == "affine":
        gnd = cache / "affine_set" / "gnd_affine.pkl"
        if not gnd.is_file():
            build_affine_set(data / "oxford-affine", gnd.parent)
        return load_revisited("affine", gnd.parent, gnd_path=gnd)
    if name == "demo":
        return demo_set(cache)
    raise ValueError(f"unknown set {name!r}; known: {', '.join(SETS)}")


def codebook_images(name: str, data: Path = DATA) -> list[Path] | None:
    """Images to train the ASMK codebook on: the other city for the mini sets (as the papers train on
    another dataset than the one searched), None (the database itself, as a user's index does) otherwise."""
    base = name.removesuffix("+d")
    if base in CITY:
        return sorted((data / "mini-revisitop" / CITY[OTHER[base]] / "jpg").glob("*.jpg"))
    return None
