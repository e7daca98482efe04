"""Brute-force SIFT verification of every pair: the reference the default method must beat (issue 18).

    python benchmarks/bruteforce_sift.py [--sets roxf,rpar,...] [--cache DIR] [--json out.json]

Fixed protocol, nothing tuned: OpenCV SIFT (``nfeatures=2000``, grayscale, the image as stored), RootSIFT
(L1-normalise, square root), putative matches = mutual nearest neighbours that also pass Lowe's ratio test
``d1 < 0.8 d2`` (query -> database direction), ``cv2.estimateAffine2D`` with RANSAC, 20 px, 2,000
iterations, confidence 0.999, ``cv2.setRNGSeed(0)`` before each call; score = inlier count (fewer than 3
matches: 0). Every query (cropped to its box, as the revisited protocol does) is verified against every
database image; ties keep database order. Scored with ``glocal.evaluate.protocol``.

Database features are cached in ``--cache`` (outside the repository). Query extraction and every pair's
matching + verification are timed; a set and its ``+d`` twin share the pairs they have in common (the twin's
database extends the set's), each pair computed once and its time counted for every set that contains it.
With ``--reuse``, pair results (inliers and the seconds they took, with the load average when measured) are
also kept in the cache and reused by later runs; without it (the default) everything is measured in this run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from retrieval_sets import SETS, load_set  # noqa: E402

from glocal.evaluate.datasets import RetrievalDataset  # noqa: E402
from glocal.evaluate.protocol import SetupResult, evaluate_setups  # noqa: E402

N_FEATURES = 2000
RATIO = 0.8
THRESHOLD_PX = 20.0
MAX_ITERS = 2000
CONFIDENCE = 0.999
DEFAULT_CACHE = Path("/tmp/glocal-bench-cache")

Features = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]  # (xy (n, 2), RootSIFT (n, 128))


def extract(path: Path, box: tuple[float, float, float, float] | None = None) -> Features:
    """SIFT keypoints (pixels of the stored image) and RootSIFT descriptors of ``path``, cropped to ``box``."""
    gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise OSError(f"{path}: cannot read")
    x0 = y0 = 0
    if box is not None:
        h, w = gray.shape
        x0, y0 = max(0, int(round(box[0]))), max(0, int(round(box[1])))
        x1, y1 = min(w, int(round(box[2]))), min(h, int(round(box[3])))
        gray = gray[y0:y1, x0:x1]
    kps, desc = cv2.SIFT_create(nfeatures=N_FEATURES).detectAndCompute(gray, None)
    if desc is None or not kps:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32)
    xy = np.array([k.pt for k in kps], np.float32) + np.float32([x0, y0])
    desc = desc.astype(np.float32)
    desc /= desc.sum(axis=1, keepdims=True) + 1e-7  # SIFT entries are >= 0: this is the L1 norm
    return xy, np.sqrt(desc)


def mutual_ratio_matches(q: npt.NDArray[np.float32], d: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    """(m, 2) index pairs (query, database): mutual nearest neighbours passing Lowe's ratio ``d1 < 0.8 d2``.

    RootSIFT rows are L2-normalised, so the squared distance is ``2 - 2 q.d``."""
    if len(q) < 2 or len(d) < 2:
        return np.zeros((0, 2), np.int64)
    rows = np.arange(len(q))
    sim = q @ d.T
    nn, back = np.argmax(sim, axis=1), np.argmax(sim, axis=0)
    s1 = sim[rows, nn]
    sim[rows, nn] = -np.inf
    s2 = sim.max(axis=1)
    d1, d2 = np.sqrt(np.maximum(2.0 - 2.0 * s1, 0.0)), np.sqrt(np.maximum(2.0 - 2.0 * s2, 0.0))
    keep = (d1 < RATIO * d2) & (back[nn] == rows)
    return np.stack([np.flatnonzero(keep), nn[keep]], axis=1).astype(np.int64)


def inliers(qxy: npt.NDArray[np.float32], dxy: npt.NDArray[np.float32], matches: npt.NDArray[np.int64]) -> int:
    """Inliers of an affine model fitted by RANSAC (20 px, 2,000 iterations, confidence 0.999, seed 0)."""
    if len(matches) < 3:
        return 0
    cv2.setRNGSeed(0)
    _, mask = cv2.estimateAffine2D(qxy[matches[:, 0]], dxy[matches[:, 1]], method=cv2.RANSAC,
                                   ransacReprojThreshold=THRESHOLD_PX, maxIters=MAX_ITERS, confidence=CONFIDENCE)
    return 0 if mask is None else int(mask.sum())


class FeatureCache:
    """Database features on disk, one ``.npz`` per image, keyed by path, size, mtime and the settings."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder / "bruteforce_sift_features"
        self.folder.mkdir(parents=True, exist_ok=True)

    def get(self, path: Path) -> Features:
        st = path.stat()
        key = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{N_FEATURES}".encode()).hexdigest()
        file = self.folder / f"{key}.npz"
        if file.is_file():
            with np.load(file) as z:
                return z["xy"], z["desc"]
        xy, desc = extract(path)
        np.savez(file, xy=xy, desc=desc)
        return xy, desc


@dataclass
class Outcome:
    """Scores and per-query milliseconds (extraction, first stage = none, verification) of one set."""

    setups: dict[str, SetupResult]
    ms: dict[str, list[float]]


@dataclass
class BruteForce:
    """Verifies every pair once per run; sets sharing queries and database images reuse the pairs.
    ``reuse``: pair results and query extraction times are also read from / written to the cache."""

    cache: FeatureCache
    reuse: bool = False
    pairs: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)
    queries: dict[str, tuple[Features, float]] = field(default_factory=dict)
    loads: list[float] = field(default_factory=list)

    def _pair_file(self, qkey: str) -> Path:
        return self.cache.folder.parent / "bruteforce_pairs" / f"{hashlib.sha1(qkey.encode()).hexdigest()}.json"

    def _load_pairs(self, qkey: str) -> None:
        file = self._pair_file(qkey)
        if self.reuse and file.is_file():
            stored = json.loads(file.read_text())
            self.loads.append(stored["load"])
            for dkey, (n, sec) in stored["pairs"].items():
                self.pairs.setdefault((qkey, dkey), (n, sec))

    def _save_pairs(self, qkey: str, t_extract: float) -> None:
        if not self.reuse:
            return
        file = self._pair_file(qkey)
        file.parent.mkdir(parents=True, exist_ok=True)
        mine = {d: list(v) for (q, d), v in self.pairs.items() if q == qkey}
        tmp = file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"query": qkey, "extract s": t_extract, "load": os.getloadavg()[0], "pairs": mine}))
        tmp.replace(file)

    def query(self, path: Path, box: tuple[float, float, float, float] | None) -> tuple[Features, float]:
        key = f"{path.resolve()}|{box}"
        if key not in self.queries:
            t0 = time.perf_counter()
            feats = extract(path, box)
            self.queries[key] = (feats, time.perf_counter() - t0)
        return self.queries[key]

    def run(self, ds: RetrievalDataset) -> Outcome:
        db = [self.cache.get(p) for p in ds.db_paths]
        rankings, ms = [], {"extract": [], "first stage": [], "verify": []}
        for i, qpath in enumerate(ds.query_paths):
            (qxy, qdesc), t_extract = self.query(qpath, ds.query_box(i))
            qkey = f"{qpath.resolve()}|{ds.query_box(i)}"
            self._load_pairs(qkey)
            scores, t_verify, computed = np.zeros(len(db), np.int64), 0.0, False
            for j, (dpath, (dxy, ddesc)) in enumerate(zip(ds.db_paths, db, strict=True)):
                key = (qkey, str(dpath.resolve()))
                if key not in self.pairs:
                    t0 = time.perf_counter()
                    n = inliers(qxy, dxy, mutual_ratio_matches(qdesc, ddesc))
                    self.pairs[key] = (n, time.perf_counter() - t0)
                    computed = True
                scores[j], t_verify = self.pairs[key][0], t_verify + self.pairs[key][1]
            if computed:
                self._save_pairs(qkey, t_extract)
            rankings.append(np.argsort(-scores, kind="stable"))
            ms["extract"].append(1000 * t_extract)
            ms["first stage"].append(0.0)
            ms["verify"].append(1000 * t_verify)
        return Outcome(evaluate_setups(np.stack(rankings), ds.gnd), ms)


def summary(outcome: Outcome) -> dict[str, float]:
    """mAP (percent) per setup and mean ms per query per stage."""
    out = {k: round(100 * v.map, 2) for k, v in outcome.setups.items()}
    out.update({f"ms {k}": round(float(np.mean(v)), 1) for k, v in outcome.ms.items()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of {', '.join(SETS)}")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="feature cache (never inside the repo)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--reuse", action="store_true", help="keep and reuse pair results in the cache")
    args = ap.parse_args()
    names = args.sets.split(",")  # in the order given; a +d twin reuses the pairs of its plain set
    bf, results = BruteForce(FeatureCache(args.cache), reuse=args.reuse), {}
    for name in names:
        t0 = time.perf_counter()
        results[name] = summary(bf.run(load_set(name, args.cache)))
        print(f"{name:<8} {results[name]}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
