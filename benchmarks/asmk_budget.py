"""What the opt-in approximate ASMK* search costs on real data: mAP and recall against exact scoring.

    python benchmarks/asmk_budget.py [--data ../shared/data/mini-revisitop] [--cache /tmp/asmk_budget]

``InvertedFile.search(..., budget=F)`` scans only the query's words with the shortest posting lists, up to a
fraction F of the query's posting entries (:func:`glocal.index.scan.budget_words`); F = 1 is exact. For the
mini ROxf and RPar subsets: RootSIFT (the ``sift`` method's extractor) of the database and the cropped
queries, a 65,536-word codebook sampled from the other city's descriptors, the fast quantizer (database
k = 1, query k = 5), an ASMK* inverted file (alpha 3, tau 0), and per budget: Medium / Hard mAP of the
shortlist alone (no verification), recall@10 / @100 of the exact top-k, and the fraction of entries scanned.

Leave one set out: the budget "chosen on" a set is the smallest whose Medium mAP there is within 1 point of
exact; the table gives what that budget does on the other set. Descriptors are cached under ``--cache``.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from glocal.evaluate.protocol import revisited_setups
from glocal.extract.batch import extract_one
from glocal.index import scan
from glocal.index.asmk import aggregate
from glocal.index.codebook import Codebook
from glocal.index.inverted_file import IndexSettings, InvertedFile
from glocal.index.quantizer import fast_quantizer
from glocal.io.safe_pickle import safe_load_pickle
from glocal.methods import create_extractor

BUDGETS = (1.0, 0.9, 0.75, 0.6, 0.5, 0.35, 0.25)


def features(data: Path, name: str, cache: Path) -> tuple[dict, list[np.ndarray], list[np.ndarray]]:
    """(ground truth, database descriptors, query descriptors) of one mini set, RootSIFT, cached as npz."""
    gnd = safe_load_pickle(data / f"gnd_{name}_subset.pkl")
    f = cache / f"{name}.npz"
    if not f.exists():
        ex = create_extractor("sift")
        jpg = data / name / "jpg"
        db = [extract_one(ex, jpg / f"{n}.jpg", n).descriptors.astype(np.float32) for n in gnd["imlist"]]
        qs = [extract_one(ex, jpg / f"{n}.jpg", n, box=tuple(q["bbx"])).descriptors.astype(np.float32)
              for n, q in zip(gnd["qimlist"], gnd["gnd"])]
        np.savez(f, db_sizes=[len(d) for d in db], q_sizes=[len(d) for d in qs], db=np.concatenate(db),
                 q=np.concatenate(qs))
    z = np.load(f)

    def split(x: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
        return np.split(x, np.cumsum(sizes)[:-1])

    return gnd, split(z["db"], z["db_sizes"]), split(z["q"], z["q_sizes"])


def evaluate(name: str, other: str, feats: dict, words: int, seed: int, work: Path) -> dict[float, tuple]:
    """Per budget: (mAP medium, mAP hard, recall@10, recall@100, fraction of entries scanned)."""
    gnd, db, queries = feats[name]
    pool = np.concatenate(feats[other][1])
    pool = pool[np.random.default_rng(seed).permutation(len(pool))]
    codebook = Codebook(np.ascontiguousarray(pool[:words]), {"kind": "random sample"})
    q = fast_quantizer(codebook, pool[words: words + 5000], k=1, query_k=5, seed=seed)
    with InvertedFile.create(work / name, codebook, IndexSettings(binary=True), quantizer=q) as idx:
        idx.add([aggregate(d, codebook, 1, True, q) for d in db])
        aggs = [aggregate(d, codebook, 5, True, q) for d in queries]
        n = len(db)
        exact = [idx.search(a, n, kernel="compiled")[0] for a in aggs]
        out = {}
        for b in BUDGETS:
            ranks = [idx.search(a, n, kernel="compiled", budget=b)[0] for a in aggs]
            setups = revisited_setups(np.array(ranks), gnd["gnd"])
            rec = [[len(np.intersect1d(r[:k], e[:k])) / k for r, e in zip(ranks, exact)] for k in (10, 100)]
            scanned = []
            for a in aggs:
                qw = np.asarray(a.words, np.int64)
                keep = scan.budget_words(idx.segments, qw, b) if b < 1 else np.ones(len(qw), bool)
                lens = np.zeros(len(qw))
                for s in idx.segments:
                    pos = np.minimum(np.searchsorted(s.words, qw), len(s.words) - 1)
                    hit = s.words[pos] == qw
                    lens[hit] += s.bounds[pos[hit] + 1] - s.bounds[pos[hit]]
                scanned.append(lens[keep].sum() / max(lens.sum(), 1))
            out[b] = (setups["medium"].map * 100, setups["hard"].map * 100, float(np.mean(rec[0])),
                      float(np.mean(rec[1])), float(np.mean(scanned)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/mini-revisitop")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "asmk_budget")
    ap.add_argument("--words", type=int, default=65_536)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    feats = {n: features(args.data, n, args.cache) for n in ("roxford5k", "rparis6k")}
    print(f"RootSIFT ready in {time.perf_counter() - t0:.0f} s; load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        res = {n: evaluate(n, o, feats, args.words, args.seed, Path(tmp))
               for n, o in (("roxford5k", "rparis6k"), ("rparis6k", "roxford5k"))}
    print("\n| set | budget | entries scanned | mAP M | mAP H | recall@10 vs exact | recall@100 vs exact |")
    print("|---|---|---|---|---|---|---|")
    for n, rows in res.items():
        for b, (m, h, r10, r100, sc) in rows.items():
            print(f"| {n} | {b:g} | {sc * 100:.0f} % | {m:.1f} | {h:.1f} | {r10:.3f} | {r100:.3f} |")
    print("\nleave one set out (budget: the smallest within 1 mAP-M point of exact on the other set):")
    for held, chosen_on in (("roxford5k", "rparis6k"), ("rparis6k", "roxford5k")):
        ok = [b for b, r in res[chosen_on].items() if r[0] >= res[chosen_on][1.0][0] - 1.0]
        b = min(ok)
        m, h, r10, r100, sc = res[held][b]
        print(f"- {held}: budget {b:g} (chosen on {chosen_on}): mAP M/H {m:.1f} / {h:.1f} against exact "
              f"{res[held][1.0][0]:.1f} / {res[held][1.0][1]:.1f}; recall@100 {r100:.3f}; {sc * 100:.0f} % of entries")


if __name__ == "__main__":
    main()
