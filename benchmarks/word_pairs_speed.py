"""Per-query first stage + words verification, query words per feature side by side, with the pair Hamming
filter as it is and as it was before session 6 (whole 16-byte rows gathered per pair), interleaved query by
query in one process so every configuration sees the same load.

    python benchmarks/word_pairs_speed.py --index RPAR.glx --set rpar [--words 5,10] [--repeats 3]

``--index``: an index of the set's database (e.g. the selection harness's cached one); ``--set``: a set of
``benchmarks/retrieval_sets.py`` (queries and boxes). Prints the median ms per query of the first stage and of
the verification for each configuration, whether the rankings agree, and the load average.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from retrieval_sets import DATA, load_set  # noqa: E402

import glocal.rerank.word_matching as wm  # noqa: E402
from glocal.index.collection import Collection  # noqa: E402
from glocal.search import Searcher  # noqa: E402

NEW = wm._hamming_pairs


def old_pairs(a, b, rows_a, rows_b):  # the pair filter before session 6: whole rows gathered per pair
    return wm._hamming(a[rows_a], b[rows_b])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--set", dest="name", required=True)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/glocal-bench-cache"))
    ap.add_argument("--words", default="5,10", help="query words per feature (word_assignments) to compare")
    ap.add_argument("--repeats", type=int, default=3, help="each query searched this many times (min kept)")
    args = ap.parse_args()
    ds = load_set(args.name, args.cache, DATA)
    col = Collection.open(args.index)
    base = {"matcher": "words", "max_hamming": 40, "rerank_top": 100}
    configs = [(f"{w} words, pair filter before", int(w), old_pairs) for w in args.words.split(",")[:1]]
    configs += [(f"{w} words", int(w), NEW) for w in args.words.split(",")]
    searchers = {name: Searcher(col, settings=base | {"word_assignments": w}) for name, w, _ in configs}
    queries = [searchers[configs[0][0]].query_features(p, ds.query_box(i)) for i, p in enumerate(ds.query_paths)]
    load = os.getloadavg()
    times = {name: {"first_stage": [], "verification": []} for name, _, _ in configs}
    ranks: dict[str, list] = {name: [] for name, _, _ in configs}
    for q in queries:
        for name, _, pairs in configs:
            wm._hamming_pairs = pairs
            best = {"first_stage": np.inf, "verification": np.inf}
            for _ in range(args.repeats):
                hits = searchers[name].search_features(q, top=100)
                for k in best:
                    best[k] = min(best[k], searchers[name].last_timings[k])
            for k in best:
                times[name][k].append(1000 * best[k])
            ranks[name].append([h.index for h in hits])
    wm._hamming_pairs = NEW
    col.close()
    print(f"{args.name}: {len(queries)} queries, {len(col.names) if hasattr(col, 'names') else '?'} images; load "
          f"average {load[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"{'configuration':<34}{'first stage':>12}{'verification':>13}  same ranking as the first")
    for name, _, _ in configs:
        med = {k: statistics.median(v) for k, v in times[name].items()}
        same = ranks[name] == ranks[configs[0][0]]
        print(f"{name:<34}{med['first_stage']:>12.1f}{med['verification']:>13.1f}  {same}")
    print("(median over queries of the best of --repeats, ms)")


if __name__ == "__main__":
    main()
