"""Where a default ``sift`` query spends its CPU time, step by step, with the array code and the compiled loops.

    OPENBLAS_NUM_THREADS=1 python benchmarks/sift_profile.py --dataset roxford5k --index DIR [--repeats 3]

For every query of the mini set (``DIR``: an index built by ``benchmarks/sift_speed.py`` or the selection
harness), CPU milliseconds (``time.process_time``, this process) of: image decode + crop, grey conversion,
OpenCV SIFT (its own threads: CPU > wall), the rest of extraction (RootSIFT, order); first stage: query words
(float32 product with the codebook + top 10 words), ASMK* aggregation of 5 words, posting-list scan;
verification of the top 100: residual sign codes of the query's 10 words, reading the word store,
correspondences from shared words (+ 40-bit code filter), hypotheses + local optimisation. Medians over
queries x repeats. One BLAS thread (``OPENBLAS_NUM_THREADS=1``) keeps the product's CPU time from counting the
busy-waiting of idle BLAS threads. Steps are the ones :meth:`glocal.search.Searcher.search_features` runs.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from sift_speed import code_path

from glocal.index.asmk import aggregate
from glocal.index.collection import Collection
from glocal.io.images import load_image
from glocal.io.safe_pickle import safe_load_pickle
from glocal.rerank.similarity_ransac import verify_batch
from glocal.rerank.word_matching import QueryWords, tentative_correspondences
from glocal.search import Searcher, word_features

STEPS = ("decode + crop", "grey", "SIFT (OpenCV)", "RootSIFT + order", "query words (k=10)", "aggregate (5 words)",
         "scan", "query sign codes", "read word store", "correspondences", "hypotheses + LO")


def profile_query(s: Searcher, path: Path, box: tuple, compiled: bool) -> dict[str, float]:
    stage, ex = s.collection.stage, s.query_extractor
    out: dict[str, float] = {}
    c = time.process_time()

    def tick(name: str) -> None:
        nonlocal c
        now = time.process_time()
        out[name] = out.get(name, 0.0) + (now - c) * 1000
        c = now

    with code_path(compiled):
        img = load_image(path, max_side=ex.max_side, box=box)
        tick("decode + crop")
        gray = img.gray
        tick("grey")
        ex._sift.detectAndCompute(gray, None)
        tick("SIFT (OpenCV)")
        f = ex.extract(img, path.stem)
        tick("RootSIFT + order")  # extract() runs grey + SIFT again: both measured above are subtracted below
        nearest = stage.query_words(f, k=10)
        tick("query words (k=10)")
        agg = aggregate(f.descriptors, stage.codebook, 5, True, nearest=nearest[:, :5])
        tick("aggregate (5 words)")
        idx, _ = stage.index.search(agg, top=len(s))
        tick("scan")
        signs = stage.query_signs(f, nearest)
        tick("query sign codes")
        cands = [word_features(stage.word_features(int(h))) for h in idx[:100]]
        tick("read word store")
        corr = tentative_correspondences(QueryWords(nearest, signs, f.keypoints, f.scales, f.orientations), cands,
                                         10, 40)
        tick("correspondences")
        verify_batch(corr, 20.0, 32, 3, True, active=corr.unique_query >= 3)
        tick("hypotheses + LO")
    out["RootSIFT + order"] -= out["grey"] + out["SIFT (OpenCV)"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="roxford5k", choices=["roxford5k", "rparis6k"])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/mini-revisitop")
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    gnd = safe_load_pickle(args.data / f"gnd_{args.dataset}_subset.pkl")
    jpg = args.data / args.dataset / "jpg"
    s = Searcher(Collection.open(args.index))
    queries = [(jpg / f"{q}.jpg", tuple(g["bbx"])) for q, g in zip(gnd["qimlist"], gnd["gnd"])]
    for compiled in (False, True):  # warm-up: numba compilation, file caches
        profile_query(s, *queries[0], compiled)
    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for _ in range(args.repeats):
        for q in queries:
            for compiled in (False, True):
                runs[compiled].append(profile_query(s, *q, compiled))
    s.close()
    print(f"{args.dataset}: {len(queries)} queries x {args.repeats}; median CPU ms per query")
    print(f"{'step':<24}{'numpy':>9}{'numba':>9}")
    for step in STEPS:
        a, b = (statistics.median(r[step] for r in runs[k]) for k in (False, True))
        print(f"{step:<24}{a:>9.1f}{b:>9.1f}")
    for name, steps in (("extraction", STEPS[:4]), ("first stage", STEPS[4:7]), ("verification", STEPS[7:])):
        a, b = (statistics.median(sum(r[x] for x in steps) for r in runs[k]) for k in (False, True))
        print(f"{name + ' (sum)':<24}{a:>9.1f}{b:>9.1f}")


if __name__ == "__main__":
    main()
