"""Per-query latency of the default ``sift`` pipeline, stage by stage, for several verifiers side by side.

    python benchmarks/sift_speed.py --dataset roxford5k [--data ../shared/data/mini-revisitop] [--index DIR]
        [--config words:matcher=words --config descriptors:matcher=descriptors ...] [--brute]

Builds (or opens) an index of the dataset's database (codebook trained on the other city), then for every
query times: feature extraction (once), and for each configuration (a name and ``--set`` re-ranking options;
default: the two matchers, ``words`` and ``descriptors``) the first stage (query words + ASMK* shortlist)
and the spatial verification of the top ``rerank_top``. Prints the medians, the load average before and
after, and the mAP of each configuration (mAP for reporting only: defaults are not chosen on these sets).
``--brute`` adds descriptor verification of every database image (the brute-force reference).

``--compare-paths`` runs every configuration twice per query, with the array code (numpy only, the code before
the compiled loops) and with the compiled loops (numba: word assignment, aggregation, word pairs,
verification), prints both side by side (wall and CPU ms per stage) and checks query by query that the two
give the same ranking, scores and inlier counts (exit status 1 if any query differs).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path

from glocal.evaluate.protocol import revisited_setups
from glocal.index import asmk, codebook
from glocal.index.builder import build_index
from glocal.index.collection import Collection
from glocal.io.safe_pickle import safe_load_pickle
from glocal.methods.options import parse_set
from glocal.rerank import similarity_ransac, word_matching
from glocal.search import Searcher

DEFAULT_CONFIGS = ("words:matcher=words", "descriptors:matcher=descriptors")


@contextlib.contextmanager
def code_path(compiled: bool):  # noqa: ANN201
    """Run the block with the compiled loops on or off (the module switches that default ``compiled=None``)."""
    modules = (codebook, asmk, word_matching, similarity_ransac)
    saved = [m.COMPILED for m in modules]
    for m in modules:
        m.COMPILED = compiled
    try:
        yield
    finally:
        for m, v in zip(modules, saved):
            m.COMPILED = v


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
    ap.add_argument("--compare-paths", action="store_true",
                    help="run each configuration with the array code and with the compiled loops, compare results")
    args = ap.parse_args()
    if args.compare_paths:
        print(f"numba installed: {codebook.COMPILED}")
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
        paths = [("numpy", False), ("numba", True)] if args.compare_paths else [("", None)]
        runs = [(f"{name} [{p}]" if p else name, s, c) for name, s in searchers for p, c in paths]
        first_q = gnd["qimlist"][0]
        warm = searchers[0][1].query_features(jpg / f"{first_q}.jpg", box=tuple(gnd["gnd"][0]["bbx"]))
        for _, s, c in runs:  # compile (numba), open files, start threads: not timed
            with code_path(c) if c is not None else contextlib.nullcontext():
                s.search_features(warm, top=len(s))
        load_before = os.getloadavg()
        extract: list[float] = []
        extract_cpu: list[float] = []
        keys = ("first_stage", "verification", "first_stage_cpu", "verification_cpu", "total", "total_cpu")
        times = {name: {k: [] for k in keys} for name, _, _ in runs}
        ranks: dict[str, list[list[int]]] = {name: [] for name, _, _ in runs}
        found: dict[str, list[list[tuple]]] = {name: [] for name, _, _ in runs}
        for qname, q in zip(gnd["qimlist"], gnd["gnd"]):
            t0, c0 = time.perf_counter(), time.process_time()
            feats = searchers[0][1].query_features(jpg / f"{qname}.jpg", box=tuple(q["bbx"]))
            extract.append(time.perf_counter() - t0)
            extract_cpu.append(time.process_time() - c0)
            for name, s, c in runs:
                with code_path(c) if c is not None else contextlib.nullcontext():
                    hits = s.search_features(feats, top=len(s))
                t = s.last_timings
                for k in keys[:4]:
                    times[name][k].append(t[k])
                times[name]["total"].append(extract[-1] + t["first_stage"] + t["verification"])
                times[name]["total_cpu"].append(extract_cpu[-1] + t["first_stage_cpu"] + t["verification_cpu"])
                ranks[name].append([h.index for h in hits])
                found[name].append([(h.index, h.score, h.shortlist_score, h.inliers, h.verified) for h in hits])
        load_after = os.getloadavg()
        n_db = len(collection)
        collection.close()
    n_top = {name: conf.get("rerank_top", searchers[0][1].options.rerank.rerank_top) for name, conf in configs}
    print(f"\n{args.dataset}: {len(extract)} queries, {n_db} database images, {args.workers} threads; "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"extract (query, once): median {statistics.median(extract) * 1000:.1f} ms wall, "
          f"{statistics.median(extract_cpu) * 1000:.1f} ms CPU; max {max(extract) * 1000:.1f} wall")
    print(f"{'configuration':<34}{'first stage':>12}{'verification':>13}{'per pair':>9}{'total':>9}"
          f"{'  | CPU: first':>14}{'verif.':>8}{'total':>8}{'mAP M':>8}{'mAP H':>8}")
    for name, _, _ in runs:
        res = revisited_setups(ranks[name], gnd["gnd"])
        med = {k: statistics.median(v) * 1000 for k, v in times[name].items()}
        per_pair = med["verification"] / max(1, min(n_db, n_top[name.split(" [")[0]]))
        print(f"{name:<34}{med['first_stage']:>12.1f}{med['verification']:>13.1f}{per_pair:>9.2f}{med['total']:>9.1f}"
              f"{med['first_stage_cpu']:>14.1f}{med['verification_cpu']:>8.1f}{med['total_cpu']:>8.1f}"
              f"{res['medium'].map * 100:>8.1f}{res['hard'].map * 100:>8.1f}")
    print("(median ms per query; total = extract + first stage + verification, median of the per-query totals; "
          "per pair = verification / pairs verified)")
    if args.compare_paths:
        bad = 0
        for name, _ in configs:
            a, b = found[f"{name} [numpy]"], found[f"{name} [numba]"]
            diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
            bad += len(diff)
            print(f"{name}: numpy and numba paths give the same ranking, scores and inliers on "
                  f"{len(a) - len(diff)} of {len(a)} queries" + (f"; differ on {diff}" if diff else ""))
        if bad:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
