"""Per-query latency of the default ``sift`` pipeline, stage by stage, for several verifiers side by side.

    python benchmarks/sift_speed.py --dataset roxford5k [--data ../shared/data/mini-revisitop] [--index DIR]
        [--config words:matcher=words --config descriptors:matcher=descriptors ...] [--brute]

Builds (or opens) an index of the dataset's database (codebook trained on the other city), then for every
query times: feature extraction (once), and for each configuration (a name and ``--set`` re-ranking options;
default: the two matchers, ``words`` and ``descriptors``) the first stage (query words + ASMK* shortlist)
and the spatial verification of the top ``rerank_top``. Prints the medians, the load average before and
after, and the mAP of each configuration (mAP for reporting only: defaults are not chosen on these sets).
``--brute`` adds descriptor verification of every database image (the brute-force reference).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from glocal.evaluate.protocol import revisited_setups
from glocal.index.builder import build_index
from glocal.index.collection import Collection
from glocal.io.safe_pickle import safe_load_pickle
from glocal.methods.options import parse_set
from glocal.search import Searcher

DEFAULT_CONFIGS = ("words:matcher=words", "descriptors:matcher=descriptors")


def parse_config(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition(":")
    return name, parse_set([kv for kv in rest.split(",") if kv])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="roxford5k", choices=["roxford5k", "rparis6k"])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/mini-revisitop")
    ap.add_argument("--index", type=Path, default=None, help="reuse (or save) an index built for this dataset")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--config", action="append", default=[], help="NAME:KEY=VALUE,KEY=VALUE (repeatable)")
    ap.add_argument("--brute", action="store_true", help="also verify every database image with descriptors")
    args = ap.parse_args()
    configs = [parse_config(c) for c in (args.config or DEFAULT_CONFIGS)]
    if args.brute:
        configs.append(("brute force (descriptors, all)", {"matcher": "descriptors", "rerank_top": 100000}))
    other = "rparis6k" if args.dataset == "roxford5k" else "roxford5k"
    gnd = safe_load_pickle(args.data / f"gnd_{args.dataset}_subset.pkl")
    jpg = args.data / args.dataset / "jpg"
    with tempfile.TemporaryDirectory() as tmp:
        if args.index and args.index.exists():
            collection = Collection.open(args.index)
        else:
            t0 = time.perf_counter()
            cb = sorted((args.data / other / "jpg").glob("*.jpg"))
            collection = build_index([jpg / f"{n}.jpg" for n in gnd["imlist"]], gnd["imlist"],
                                     args.index or Path(tmp) / "idx", codebook_paths=cb, progress=False).collection
            print(f"build: {time.perf_counter() - t0:.1f} s for {len(collection)} images + {len(cb)} codebook images")
        searchers = [(name, Searcher(collection, workers=args.workers, settings=conf)) for name, conf in configs]
        load_before = os.getloadavg()
        extract: list[float] = []
        times = {name: {"first stage": [], "verification": [], "total": []} for name, _ in configs}
        ranks: dict[str, list[list[int]]] = {name: [] for name, _ in configs}
        for qname, q in zip(gnd["qimlist"], gnd["gnd"]):
            t0 = time.perf_counter()
            feats = searchers[0][1].query_features(jpg / f"{qname}.jpg", box=tuple(q["bbx"]))
            extract.append(time.perf_counter() - t0)
            for name, s in searchers:
                hits = s.search_features(feats, top=len(s))
                t = s.last_timings
                times[name]["first stage"].append(t["first_stage"])
                times[name]["verification"].append(t["verification"])
                times[name]["total"].append(extract[-1] + t["first_stage"] + t["verification"])
                ranks[name].append([h.index for h in hits])
        load_after = os.getloadavg()
        n_db = len(collection)
        collection.close()
    print(f"\n{args.dataset}: {len(extract)} queries, {n_db} database images, {args.workers} threads; "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"extract (query, once): median {statistics.median(extract) * 1000:.1f} ms, max {max(extract) * 1000:.1f}")
    print(f"{'configuration':<34}{'first stage':>12}{'verification':>13}{'total':>9}{'mAP M':>8}{'mAP H':>8}")
    for name, _ in configs:
        res = revisited_setups(ranks[name], gnd["gnd"])
        med = {k: statistics.median(v) * 1000 for k, v in times[name].items()}
        print(f"{name:<34}{med['first stage']:>12.1f}{med['verification']:>13.1f}{med['total']:>9.1f}"
              f"{res['medium'].map * 100:>8.1f}{res['hard'].map * 100:>8.1f}")
    print("(median ms per query; total = extract + first stage + verification)")


if __name__ == "__main__":
    main()
