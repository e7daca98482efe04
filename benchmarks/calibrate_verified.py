"""Calibrate the verified yes/no threshold (``verify_min_inliers``) on negative pairs, leave one city out.

    python benchmarks/calibrate_verified.py [--data ../shared/data/mini-revisitop] [--set KEY=VALUE ...]
        [--index-roxford5k DIR] [--index-rparis6k DIR] [--max-fp 0.01] [--json out.json]

For each city A (mini-ROxf, mini-RPar) an index of A's database plus the other city's images as distractors
(codebook trained on the other city, as in ``glocal eval --distractors``) is built, or reused with
``--index-A``. Every query is verified against *every* indexed image (``rerank_top`` = all), giving one
inlier count per pair. Positives: the query's easy + hard images. Negatives: every other image of A except
junk (other landmarks) and every image of the other city. On city A the smallest threshold t whose false
positive rate (negatives with >= t inliers) is at most ``--max-fp`` is chosen; its false- and true-positive
rates are then measured on the other city (held out), in both directions. ``--set`` passes re-ranking
options (e.g. ``matcher=descriptors``) so each verifier gets its own threshold.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from glocal.index.builder import add_images, build_index
from glocal.index.collection import Collection
from glocal.io.safe_pickle import safe_load_pickle
from glocal.methods.options import parse_set
from glocal.search import Searcher

CITIES = ("roxford5k", "rparis6k")
DISTRACTOR = "other-city:"


def open_index(data: Path, city: str, other: str, path: Path | None, tmp: Path) -> Path:
    """The index of ``city``'s database + ``other``'s images (codebook on ``other``), built if needed."""
    if path is not None and path.exists():
        return path
    out = path or tmp / f"{city}.glx"
    gnd = safe_load_pickle(data / f"gnd_{city}_subset.pkl")
    jpg = data / city / "jpg"
    others = sorted((data / other / "jpg").glob("*.jpg"))
    t0 = time.perf_counter()
    built = build_index([jpg / f"{n}.jpg" for n in gnd["imlist"]], gnd["imlist"], out, codebook_paths=others,
                        progress=False)
    add_images(built.collection, others, [DISTRACTOR + p.stem for p in others], progress=False)
    built.collection.close()
    print(f"{city}: built {out} in {time.perf_counter() - t0:.0f} s")
    return out


def pair_inliers(data: Path, city: str, index: Path, settings: dict) -> tuple[list[int], list[int], float]:
    """Inlier counts of every (query, positive) and (query, negative) pair of ``city``, and ms per pair."""
    gnd = safe_load_pickle(data / f"gnd_{city}_subset.pkl")
    pos, neg, seconds, pairs = [], [], 0.0, 0
    with Searcher(Collection.open(index), settings=settings) as s:
        names = s.collection.names
        for qname, g in zip(gnd["qimlist"], gnd["gnd"]):
            feats = s.query_features(data / city / "jpg" / f"{qname}.jpg", box=tuple(g["bbx"]))
            hits = s.search_features(feats, top=len(s), rerank_top=len(s))
            seconds += s.last_timings["verification"]
            pairs += len(hits)
            inl = {names[h.index]: h.inliers for h in hits}
            positives = {gnd["imlist"][i] for i in list(g["easy"]) + list(g["hard"])}
            ignore = {gnd["imlist"][i] for i in g["junk"]} | {qname}
            for name, n in inl.items():
                if name in positives:
                    pos.append(n)
                elif name not in ignore:
                    neg.append(n)
    return pos, neg, 1000 * seconds / max(pairs, 1)


def rate(counts: list[int], t: int) -> float:
    return float(np.mean(np.asarray(counts) >= t)) if counts else 0.0


def smallest_threshold(neg: list[int], max_fp: float) -> int:
    t = 1
    while rate(neg, t) > max_fp:
        t += 1
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/mini-revisitop")
    ap.add_argument("--set", dest="settings", action="append", default=[], help="re-ranking option KEY=VALUE")
    for c in CITIES:
        ap.add_argument(f"--index-{c}", type=Path, default=None, help=f"reuse (or save) the {c} + distractors index")
    ap.add_argument("--max-fp", type=float, default=0.01)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=None, help="folder keeping each city's pair counts "
                    "(<city>.json, reused when present: delete it after changing --set)")
    ap.add_argument("--only", choices=CITIES, default=None, help="only count this city's pairs (needs --cache)")
    args = ap.parse_args()
    settings = parse_set(args.settings)
    counts = {}
    with tempfile.TemporaryDirectory() as tmp:
        for city, other in (CITIES, CITIES[::-1]):
            if args.only not in (None, city):
                continue
            cached = args.cache / f"{city}.json" if args.cache else None
            if cached is not None and cached.exists():
                counts[city] = tuple(json.loads(cached.read_text()))
                continue
            index = open_index(args.data, city, other, getattr(args, f"index_{city}"), Path(tmp))
            counts[city] = pair_inliers(args.data, city, index, settings)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                cached.write_text(json.dumps(counts[city]))
    if args.only:
        return
    print(f"settings: {settings or 'defaults'}; load average {os.getloadavg()[0]:.1f}")
    print("| fit on | threshold | FP fit | TP fit | held out | FP held out | TP held out | ms / pair |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for fit, held in (CITIES, CITIES[::-1]):
        pos_f, neg_f, ms_f = counts[fit]
        pos_h, neg_h, ms_h = counts[held]
        t = smallest_threshold(neg_f, args.max_fp)
        row = {"fit": fit, "threshold": t, "fp_fit": rate(neg_f, t), "tp_fit": rate(pos_f, t), "held_out": held,
               "fp_held_out": rate(neg_h, t), "tp_held_out": rate(pos_h, t), "negatives_held_out": len(neg_h),
               "positives_held_out": len(pos_h), "ms_per_pair": round((ms_f + ms_h) / 2, 3)}
        rows.append(row)
        print(f"| {fit} | {t} | {row['fp_fit']:.2%} | {row['tp_fit']:.1%} | {held} | {row['fp_held_out']:.2%} "
              f"({len(neg_h)} pairs) | {row['tp_held_out']:.1%} ({len(pos_h)} pairs) | {row['ms_per_pair']} |")
    if args.json:
        args.json.write_text(json.dumps({"settings": settings, "rows": rows,
                                         "counts": {c: {"positives": counts[c][0], "negatives": counts[c][1]}
                                                    for c in CITIES}}))


if __name__ == "__main__":
    main()
