"""Per-query latency of the default ``sift`` pipeline, stage by stage, against brute-force verification.

    python benchmarks/sift_speed.py --dataset roxford5k [--data ../shared/data/mini-revisitop] [--index DIR]

Builds (or opens) an index of the dataset's database (codebook trained on the other city), then for every
query times: feature extraction, ASMK* shortlist, and spatial verification of the top 100; and, as the
reference point, verification of every database image (brute force). Prints medians and the mAP of both.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from glocal.evaluate.protocol import revisited_setups
from glocal.index.builder import build_index
from glocal.io.safe_pickle import safe_load_pickle
from glocal.search import Searcher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="roxford5k", choices=["roxford5k", "rparis6k"])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/mini-revisitop")
    ap.add_argument("--index", type=Path, default=None, help="reuse an index built for this dataset")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    other = "rparis6k" if args.dataset == "roxford5k" else "roxford5k"
    gnd = safe_load_pickle(args.data / f"gnd_{args.dataset}_subset.pkl")
    jpg = args.data / args.dataset / "jpg"
    with tempfile.TemporaryDirectory() as tmp:
        if args.index and args.index.exists():
            engine = Searcher.open(args.index)
        else:
            t0 = time.perf_counter()
            cb = sorted((args.data / other / "jpg").glob("*.jpg"))
            engine = Searcher(build_index([jpg / f"{n}.jpg" for n in gnd["imlist"]], gnd["imlist"],
                                          args.index or Path(tmp) / "idx", codebook_paths=cb,
                                          progress=False).collection)
            print(f"build: {time.perf_counter() - t0:.1f} s for {len(engine)} images + {len(cb)} codebook images")
        engine.workers = args.workers
        times: dict[str, list[float]] = {"extract": [], "shortlist": [], "verify top 100": [], "verify all (brute force)": []}
        ranks, brute_ranks = [], []
        for name, q in zip(gnd["qimlist"], gnd["gnd"]):
            t0 = time.perf_counter()
            feats = engine.query_features(jpg / f"{name}.jpg", box=tuple(q["bbx"]))
            t1 = time.perf_counter()
            engine.search_features(feats, top=len(engine), rerank_top=0)
            t2 = time.perf_counter()
            hits = engine.search_features(feats, top=len(engine))
            t3 = time.perf_counter()
            brute = engine.search_features(feats, top=len(engine), rerank_top=len(engine))
            t4 = time.perf_counter()
            times["extract"].append(t1 - t0)
            times["shortlist"].append(t2 - t1)
            times["verify top 100"].append(t3 - t2 - (t2 - t1))
            times["verify all (brute force)"].append(t4 - t3 - (t2 - t1))
            ranks.append([h.index for h in hits])
            brute_ranks.append([h.index for h in brute])
    res, bres = revisited_setups(ranks, gnd["gnd"]), revisited_setups(brute_ranks, gnd["gnd"])
    print(f"\n{args.dataset}: {len(ranks)} queries, {len(gnd['imlist'])} database images, {args.workers} threads")
    print(f"{'stage':<28}{'median ms':>10}{'max ms':>10}")
    for k, v in times.items():
        print(f"{k:<28}{statistics.median(v) * 1000:>10.1f}{max(v) * 1000:>10.1f}")
    total = statistics.median([a + b + c for a, b, c in zip(times["extract"], times["shortlist"], times["verify top 100"])])
    print(f"{'query total (default)':<28}{total * 1000:>10.1f}")
    for label, r in (("default (ASMK* + top 100)", res), ("brute-force verification", bres)):
        print(f"mAP {label:<28} M {r['medium'].map * 100:5.1f}  H {r['hard'].map * 100:5.1f}")


if __name__ == "__main__":
    main()
