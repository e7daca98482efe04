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

Memory is :meth:`GlobalIndex.stats` per image: in RAM (vectors or codes, ids, trained quantizers) and on
disk (the float16 vectors IVF-PQ keeps, memory-mapped, to re-score its top K: rows "ivfpq + rescore K").
Build times are wall and CPU seconds of this process (all threads); the IVF-PQ index is saved to a temporary
folder and opened again before its queries, so the re-scoring reads memory-mapped vectors.

    python benchmarks/ivfpq_recall.py --runs 2048:100000 512:1000000 --rescore 100 200 500 1000
    python benchmarks/ivfpq_recall.py --runs 512:200000 --data-seed 1 --rescore 100 200 500 1000  # K chosen here
    python benchmarks/ivfpq_recall.py --runs 64:5000 --queries 20 --nprobe 8   # quick check
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from glocal.index.global_index import GlobalIndex
from glocal.index.global_params import IvfPqParams
from glocal.methods.stages import IVFPQ_RESCORE

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


def time_queries(index: GlobalIndex, q: np.ndarray, top: int, **kw: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(ids (Q, top), ms per query (Q,)): one query at a time."""
    ids = np.empty((len(q), top), np.int64)
    ms = np.empty(len(q))
    for i in range(len(q)):
        t = time.perf_counter()
        ids[i] = index.search(q[i : i + 1], top, **kw)[0][0]
        ms[i] = 1e3 * (time.perf_counter() - t)
    return ids, ms


def recall(found: np.ndarray, truth: np.ndarray, k: int) -> tuple[float, float]:
    """(R@k: exact nearest neighbour in the first k, overlap@k: share of the exact top k in the first k)."""
    r1 = float(np.mean([truth[i, 0] in found[i, :k] for i in range(len(found))]))
    ov = float(np.mean([len(np.intersect1d(found[i, :k], truth[i, :k])) / k for i in range(len(found))]))
    return r1, ov


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(t: tuple[float, float]) -> tuple[float, float]:
    """(wall s, CPU s of this process, all threads) since ``t``."""
    return round(time.perf_counter() - t[0], 1), round(time.process_time() - t[1], 1)


def _row(base: dict, index: str, ms: np.ndarray, found: np.ndarray | None, truth: np.ndarray, top: int,
         **extra: object) -> dict:
    rec = {}
    for k in (1, 10, 100):
        if k <= top:
            rec[f"R@{k}"], rec[f"overlap@{k}"] = ((1.0, 1.0) if found is None else
                                                  (round(v, 3) for v in recall(found, truth, k)))
    row = base | {"index": index} | extra | {"ms_p50": round(float(np.median(ms)), 2),
                                             "ms_p95": round(float(np.percentile(ms, 95)), 2)} | rec
    print(json.dumps(row), flush=True)
    return row


def run_size(n: int, dim: int, args: argparse.Namespace) -> list[dict]:
    t = time.perf_counter()
    x = clustered_vectors(n, dim, args.clusters, seed=1, data_seed=args.data_seed)
    q = clustered_vectors(args.queries, dim, args.clusters, seed=2, data_seed=args.data_seed)
    base = {"images": n, "dim": dim, "queries": args.queries, "data_seed": args.data_seed,
            "generate_s": round(time.perf_counter() - t, 1)}
    t = _clock()
    exact = GlobalIndex(dim, "exact", threads=1)
    exact.add(x, np.arange(n))
    exact_build = _since(t)
    truth = exact.search(q, args.top)[0]  # all queries at once (batched products): the ground truth
    timed = q[: args.exact_queries]
    time_queries(exact, timed[:3], args.top)  # warm-up
    _, ms = time_queries(exact, timed, args.top)  # (one query's float sums may order near-ties differently)
    st = exact.stats()
    rows = [_row(base, "exact", ms, None, truth, args.top, nprobe=None, code_bytes=st.code_bytes,
                 ram_bytes_per_image=round(st.bytes_per_image, 1), disk_bytes_per_image=0.0,
                 build_s=exact_build[0], build_cpu_s=exact_build[1], timed_queries=len(timed))]
    del exact
    params = IvfPqParams.for_size(n, dim)
    storage = "float16"
    t = _clock()
    ivf = GlobalIndex(dim, "ivfpq", params=params, threads=1, rescore=max(args.rescore), storage=storage)
    ivf.train(x, expected_size=n)
    train = _since(t)
    for s in range(0, n, BLOCK):
        ivf.add(x[s : s + BLOCK], np.arange(s, min(n, s + BLOCK)))
    add = _since(t)
    del x
    with tempfile.TemporaryDirectory(dir=args.tmp) as folder:
        ivf.save(folder)  # the full vectors go to disk and are memory-mapped from here on
        build = _since(t)
        ivf = GlobalIndex.open(folder, threads=1)
        st = ivf.stats()
        info = {"nlist": params.nlist, "m": params.m, "code_bytes": st.code_bytes,
                "ram_bytes_per_image": round((st.total_bytes - st.mapped_bytes) / st.images, 1),
                "train_s": train[0], "train_cpu_s": train[1], "add_s": round(add[0] - train[0], 1),
                "add_cpu_s": round(add[1] - train[1], 1), "build_s": build[0], "build_cpu_s": build[1],
                "coarse_sample": ivf.training["coarse_sample"], "pq_sample": ivf.training["pq_sample"],
                "timed_queries": args.queries}
        for nprobe in sorted(set(args.nprobe + [params.nprobe])):
            if nprobe > params.nlist:
                continue
            for k in [0] + args.rescore:
                time_queries(ivf, q[:3], args.top, nprobe=nprobe, rescore=k)
                found, ms = time_queries(ivf, q, args.top, nprobe=nprobe, rescore=k)
                disk = round(st.mapped_bytes / st.images, 1) if k else 0.0
                rows.append(_row(base, "ivfpq" + (f" + rescore {k}" if k else ""), ms, found, truth, args.top,
                                 nprobe=nprobe, default_nprobe=nprobe == params.nprobe, rescore=k,
                                 disk_bytes_per_image=disk, **info))
        del ivf
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| images | D | index | nprobe | R@1 | R@10 | R@100 | overlap@10 | overlap@100 | ms p50 | ms p95 "
            "| RAM bytes / image | disk bytes / image (re-scoring) | build s wall / CPU (train + add) |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        probe = "" if r["nprobe"] is None else f"{r['nprobe']}{' (default)' if r.get('default_nprobe') else ''}"
        build = f"{r['build_s']:,} / {r['build_cpu_s']:,}" + (
            f" ({r['train_s']:,} + {r['add_s']:,})" if "train_s" in r else "")
        out.append(f"| {r['images']:,} | {r['dim']} | {r['index']}"
                   + (f" (nlist {r['nlist']}, m {r['m']})" if "nlist" in r else "")
                   + f" | {probe} | {r.get('R@1', '')} | {r.get('R@10', '')} | {r.get('R@100', '')} "
                   f"| {r.get('overlap@10', '')} | {r.get('overlap@100', '')} | {r['ms_p50']:,} | {r['ms_p95']:,} "
                   f"| {r['ram_bytes_per_image']:,} | {r['disk_bytes_per_image']:,} | {build} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="+", default=["2048:100000", "512:1000000"], metavar="DIM:IMAGES",
                    help="one (dimension, images) setting each, run in turn in this process")
    ap.add_argument("--dim", type=int, help="with --sizes: the runs DIM:N for each N (the earlier command form)")
    ap.add_argument("--sizes", type=int, nargs="+")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--exact-queries", type=int, default=50, help="exact queries timed one at a time (the "
                    "ground truth of all queries comes from one batched exact search)")
    ap.add_argument("--top", type=int, default=100)
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--data-seed", type=int, default=0, help="seed of the cluster centres and subspace (the "
                    "reported runs use 0; the rescore default was chosen on 1)")
    ap.add_argument("--nprobe", type=int, nargs="*", default=[], help="besides the size's default")
    ap.add_argument("--rescore", type=int, nargs="+", default=[IVFPQ_RESCORE],
                    help="IVF-PQ candidates re-scored exactly (one row each; the index keeps float16 vectors)")
    ap.add_argument("--tmp", default=None, help="folder for the saved IVF-PQ index (default: the system's)")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()}", flush=True)
    rows = []
    if args.dim and args.sizes:
        args.runs = [f"{args.dim}:{n}" for n in args.sizes]
    for run in args.runs:
        dim, n = (int(v) for v in run.split(":"))
        rows += run_size(n, dim, args)
    print(markdown(rows))
    print(f"load average {os.getloadavg()}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
