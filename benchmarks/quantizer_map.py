"""Does the fast two-level quantizer cost retrieval accuracy? mAP of ASMK* on real data, exact vs fast assignment.

    python benchmarks/quantizer_map.py [--data ../shared/data/mini-revisitop] [--words 65536]

For ROxf and RPar (the mini subsets): RootSIFT of the database and the cropped queries; a ``--words``-word
codebook from the other city's descriptors (a random sample of them, i.e. the k-means initialisation, unless
``--iterations`` > 0); the fast quantizer calibrated to 99 % on other-city descriptors left out of the
codebook (database side k = 1, query side k = 5, the HOW/FIRe setting). Both assignments feed the same
ASMK* index (alpha 3, tau 0); the table gives Medium/Hard mAP of the shortlist alone (no verification, so the
quantizer's effect is not hidden), the agreement with exact assignment on this dataset's own descriptors,
and ms per 1,000 descriptors for both.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from glocal.evaluate.protocol import revisited_setups
from glocal.extract.batch import extract_one
from glocal.index.asmk import AsmkIndex, aggregate
from glocal.index.codebook import Codebook
from glocal.index.kmeans import train_codebook
from glocal.index.quantizer import agreement, fast_quantizer
from glocal.io.safe_pickle import safe_load_pickle
from glocal.methods import create_extractor


def dataset_features(extractor, data: Path, name: str) -> tuple[dict, list[np.ndarray], list[np.ndarray]]:
    gnd = safe_load_pickle(data / f"gnd_{name}_subset.pkl")
    jpg = data / name / "jpg"
    db = [extract_one(extractor, jpg / f"{n}.jpg", n).descriptors.astype(np.float32) for n in gnd["imlist"]]
    queries = [extract_one(extractor, jpg / f"{n}.jpg", n, box=tuple(q["bbx"])).descriptors.astype(np.float32)
               for n, q in zip(gnd["qimlist"], gnd["gnd"])]
    return gnd, db, queries


def per_1000(fn, x: np.ndarray, k: int, repeats: int = 3) -> float:
    fn(x[:100], k)
    best = min(_timed(fn, x, k) for _ in range(repeats))
    return 1000 * best * 1000 / len(x)


def _timed(fn, x, k) -> float:
    t0 = time.perf_counter()
    fn(x, k)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/mini-revisitop")
    ap.add_argument("--words", type=int, default=65_536)
    ap.add_argument("--iterations", type=int, default=0, help="k-means iterations (0: random sample of descriptors)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    extractor = create_extractor("sift")
    t0 = time.perf_counter()
    feats = {name: dataset_features(extractor, args.data, name) for name in ("roxford5k", "rparis6k")}
    print(f"RootSIFT extracted in {time.perf_counter() - t0:.0f} s; load average {os.getloadavg()[0]:.1f}")
    rows = []
    for name, other in (("roxford5k", "rparis6k"), ("rparis6k", "roxford5k")):
        gnd, db, queries = feats[name]
        pool = np.concatenate(feats[other][1])
        pool = pool[np.random.default_rng(args.seed).permutation(len(pool))]
        if len(pool) < args.words + 3000:
            raise SystemExit(f"{other}: only {len(pool):,} descriptors for a {args.words:,}-word codebook")
        if args.iterations:
            codebook = train_codebook(pool, args.words, iterations=args.iterations, seed=args.seed)
        else:
            codebook = Codebook(np.ascontiguousarray(pool[: args.words]), {"kind": "random sample"})
        quantizer = fast_quantizer(codebook, pool[args.words: args.words + 5000], k=1, query_k=5, seed=args.seed)
        own_db = np.concatenate(db)
        own_q = np.concatenate(queries)
        sample = own_db[np.random.default_rng(1).choice(len(own_db), min(3000, len(own_db)), replace=False)]
        result = {"dataset": name, "cells": quantizer.cells, "nprobe": f"{quantizer.nprobe}/{quantizer.nprobe_multi}",
                  "agree_db": agreement(quantizer.assign(own_db, 1), codebook.assign(own_db, 1)),
                  "agree_q": agreement(quantizer.assign(own_q, 5), codebook.assign(own_q, 5)),
                  "ms_exact": (per_1000(codebook.assign, sample, 1), per_1000(codebook.assign, sample, 5)),
                  "ms_fast": (per_1000(quantizer.assign, sample, 1), per_1000(quantizer.assign, sample, 5))}
        for label, q in (("exact", None), ("fast", quantizer)):
            index = AsmkIndex(codebook, binary=True)
            index.add([aggregate(d, codebook, 1, True, q) for d in db])
            ranks = [index.search(aggregate(d, codebook, 5, True, q), top=len(db))[0] for d in queries]
            setups = revisited_setups(np.array(ranks), gnd["gnd"])
            result[label] = (setups["medium"].map * 100, setups["hard"].map * 100)
        rows.append(result)
        print(f"{name}: done", flush=True)
    kind = f"k-means, {args.iterations} iterations" if args.iterations else "random sample"
    print(f"\n{args.words:,} words ({kind}); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| dataset | mAP M/H exact | mAP M/H fast | agreement db (k=1) / query (k=5) | cells, nprobe k=1/k=5 "
          "| exact ms/1000 k=1/k=5 | fast ms/1000 k=1/k=5 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['exact'][0]:.1f} / {r['exact'][1]:.1f} | {r['fast'][0]:.1f} / {r['fast'][1]:.1f} "
              f"| {r['agree_db'] * 100:.2f} % / {r['agree_q'] * 100:.2f} % | {r['cells']}, {r['nprobe']} "
              f"| {r['ms_exact'][0]:.0f} / {r['ms_exact'][1]:.0f} | {r['ms_fast'][0]:.1f} / {r['ms_fast'][1]:.1f} |")


if __name__ == "__main__":
    main()
