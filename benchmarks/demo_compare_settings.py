"""The index ``glocal demo`` built, searched with the method's defaults and with ``--set``-style alternatives.

    python benchmarks/demo_compare_settings.py demo_output [--set word_assignments=5 --set verify_min_inliers=6]

Re-uses ``demo_output/demo.glx`` and ``demo_output/data`` (``glocal demo --out demo_output`` first); prints
mAP E / M / H of the 9 queries (boxes as the demo uses them) for the defaults and for the ``--set`` values.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from glocal.demo.run import make_benchmark
from glocal.evaluate.protocol import revisited_setups
from glocal.index.collection import Collection
from glocal.methods.options import parse_set
from glocal.search import Searcher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the folder glocal demo wrote")
    ap.add_argument("--set", dest="settings", action="append", default=[], help="search / re-ranking KEY=VALUE")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    bench = make_benchmark(args.out / "data", seed=args.seed)
    col = Collection.open(args.out / "demo.glx")
    try:
        for name, settings in (("defaults", {}), ("with --set", parse_set(args.settings))):
            if name == "with --set" and not settings:
                continue
            s = Searcher(col, settings=settings)
            ranks = [[h.index for h in s.search(q, box=tuple(g["bbx"]), top=len(s))]
                     for q, g in zip(bench.query_paths, bench.gnd)]
            r = revisited_setups(ranks, bench.gnd)
            print(f"{name} ({settings or 'index defaults'}): mAP E / M / H "
                  + " / ".join(f"{100 * r[k].map:.1f}" for k in ("easy", "medium", "hard")))
    finally:
        col.close()


if __name__ == "__main__":
    main()
