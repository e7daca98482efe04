"""IVF-PQ against exact search for global descriptors: recall, latency, memory and build time, side by side.

Database and query vectors are synthetic, shaped like real global descriptors: unit vectors with a
clustered, low-intrinsic-dimension structure (``--clusters`` landmark centres on the sphere; each vector is
its centre plus a variation of norm ~0.5 drawn in a shared 64-D subspace plus isotropic noise of norm ~0.15,
then L2-normalised: members of one cluster have cosine ~0.8, of different clusters ~0). Queries are drawn from the same mixture with another seed (not copies of database rows).

Both indexes are :class:`glocal.index.global_index.GlobalIndex` (the code ``glocal index build`` runs), one
BLAS / faiss thread, queries one at a time (the latency a served query sees). Exact search gives the ground
truth and its own timing in the same run. Recall is reported two ways:

- ``R@k`` (faiss convention, "1-recall@k"): fraction of queries whose exact nearest neighbour is in the
  IVF-PQ top k;
- ``overlap@k`` ("k-recall@k"): mean fraction of the exact top k found in the IVF-PQ top k.

Memory is :meth:`GlobalIndex.stats` (vectors or codes, ids, trained quantizers) per image.

    python benchmarks/ivfpq_recall.py --dim 2048 --sizes 10000 100000
    python benchmarks/ivfpq_recall.py --dim 256 --sizes 10000 100000 1000000
    python benchmarks/ivfpq_recall.py --dim 64 --sizes 5000 --queries 20 --nprobe 8   # quick check
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from glocal.index.global_index import GlobalIndex
from glocal.index.global_params import IvfPqParams

SUBSPACE = 64
BLOCK = 50_000


def clustered_vectors(n: int, dim: int, clusters: int, seed: int, data_seed: int = 0) -> np.ndarray:
    """(n, dim) float32 unit vectors: centre + variation in a shared 64-D subspace + isotropic noise.
    ``data_seed`` fixes the centres and subspace (shared by database and queries); ``seed`` the draws."""
    base = np.random.default_rng(data_seed)
    centres = base.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = base.standard_normal((SUBSPACE, dim)).astype(np.float32) / np.sqrt(dim)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, BLOCK):
        m = min(BLOCK, n - s)
        x = centres[rng.integers(0, clusters, m)]
        x += (0.5 / np.sqrt(SUBSPACE)) * (rng.standard_normal((m, SUBSPACE)).astype(np.float32) @ basis)
        x += (0.15 / np.sqrt(dim)) * rng.standard_normal((m, dim)).astype(np.float32)
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def time_queries(index: GlobalIndex, q: np.ndarray, top: int, nprobe: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(ids (Q, top), ms per query (Q,)): one query at a time."""
    ids = np.empty((len(q), top), np.int64)
    ms = np.empty(len(q))
    for i in range(len(q)):
        t = time.perf_counter()
        ids[i] = index.search(q[i : i + 1], top, nprobe=nprobe)[0][0]
        ms[i] = 1e3 * (time.perf_counter() - t)
    return ids, ms


def recall(found: np.ndarray, truth: np.ndarray, k: int) -> tuple[float, float]:
    """(R@k: exact nearest neighbour in the first k, overlap@k: share of the exact top k in the first k)."""
    r1 = float(np.mean([truth[i, 0] in found[i, :k] for i in range(len(found))]))
    ov = float(np.mean([len(np.intersect1d(found[i, :k], truth[i, :k])) / k for i in range(len(found))]))
    return r1, ov


def run_size(n: int, args: argparse.Namespace) -> list[dict]:
    t = time.perf_counter()
    x = clustered_vectors(n, args.dim, args.clusters, seed=1)
    q = clustered_vectors(args.queries, args.dim, args.clusters, seed=2)
    gen_s = time.perf_counter() - t
    rows = []
    t = time.perf_counter()
    exact = GlobalIndex(args.dim, "exact", threads=1)
    exact.add(x, np.arange(n))
    exact_build = time.perf_counter() - t
    time_queries(exact, q[:3], args.top)  # warm-up
    truth, ms = time_queries(exact, q, args.top)
    st = exact.stats()
    base = {"images": n, "dim": args.dim, "queries": args.queries, "generate_s": round(gen_s, 1)}
    rows.append(base | {"index": "exact", "nprobe": None, "code_bytes": st.code_bytes,
                        "bytes_per_image": round(st.bytes_per_image, 1), "total_bytes": st.total_bytes,
                        "build_s": round(exact_build, 1), "ms_p50": round(float(np.median(ms)), 2),
                        "ms_p95": round(float(np.percentile(ms, 95)), 2)}
                | {f"R@{k}": 1.0 for k in (1, 10, 100)} | {f"overlap@{k}": 1.0 for k in (1, 10, 100)})
    print(json.dumps(rows[-1]), flush=True)
    del exact
    params = IvfPqParams.for_size(n, args.dim)
    t = time.perf_counter()
    ivf = GlobalIndex(args.dim, "ivfpq", params=params, threads=1)
    ivf.train(x, expected_size=n)
    train_s = time.perf_counter() - t
    for s in range(0, n, BLOCK):
        ivf.add(x[s : s + BLOCK], np.arange(s, min(n, s + BLOCK)))
    build_s = time.perf_counter() - t
    st = ivf.stats()
    for nprobe in sorted(set(args.nprobe + [params.nprobe])):
        if nprobe > params.nlist:
            continue
        time_queries(ivf, q[:3], args.top, nprobe)
        found, ms = time_queries(ivf, q, args.top, nprobe)
        rec = {}
        for k in (1, 10, 100):
            if k <= args.top:
                rec[f"R@{k}"], rec[f"overlap@{k}"] = (round(v, 3) for v in recall(found, truth, k))
        rows.append(base | {"index": "ivfpq", "nlist": params.nlist, "m": params.m, "nprobe": nprobe,
                            "default_nprobe": nprobe == params.nprobe, "code_bytes": st.code_bytes,
                            "bytes_per_image": round(st.bytes_per_image, 1), "total_bytes": st.total_bytes,
                            "train_s": round(train_s, 1), "build_s": round(build_s, 1),
                            "ms_p50": round(float(np.median(ms)), 2),
                            "ms_p95": round(float(np.percentile(ms, 95)), 2)} | rec)
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| images | D | index | nprobe | R@1 | R@10 | R@100 | overlap@10 | overlap@100 | ms p50 | ms p95 "
            "| bytes / image | build s (train + add) |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        probe = "" if r["nprobe"] is None else f"{r['nprobe']}{' (default)' if r.get('default_nprobe') else ''}"
        build = f"{r['build_s']:,}" + (f" ({r['train_s']:,} + {r['build_s'] - r['train_s']:,.1f})"
                                       if "train_s" in r else "")
        out.append(f"| {r['images']:,} | {r['dim']} | {r['index']}"
                   + (f" (nlist {r['nlist']}, m {r['m']})" if "nlist" in r else "")
                   + f" | {probe} | {r.get('R@1', '')} | {r.get('R@10', '')} | {r.get('R@100', '')} "
                   f"| {r.get('overlap@10', '')} | {r.get('overlap@100', '')} | {r['ms_p50']:,} | {r['ms_p95']:,} "
                   f"| {r['bytes_per_image']:,} | {build} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--top", type=int, default=100)
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--nprobe", type=int, nargs="*", default=[8, 32, 128], help="besides the size's default")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()}", flush=True)
    rows = [r for n in args.sizes for r in run_size(n, args)]
    print(markdown(rows))
    print(f"load average {os.getloadavg()}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
