"""Codebook training: faiss k-means (exact Lloyd iterations) vs glocal's approximate k-means (two-level assignment).

Real RootSIFT descriptors of scikit-image's sample photos (as in ``asmk_scale.py``), shuffled; the last 20,000
are held out. For each codebook size, both methods train on all the rest (fewer than 39 per word at 65,536
words: the sizes are not clipped here, unlike ``train_codebook``) with the same seed and number of iterations; the table gives the wall time, seconds per iteration and the mean squared quantisation error on
the held-out descriptors (exact assignment to each trained codebook), plus the error of the initial random
sample for scale. Seconds per iteration grow linearly with the sample: the last column extrapolates both to
the sample the paper-size codebook asks for (39 per word).

    python benchmarks/kmeans_speed.py                       # 16,384 and 65,536 words, 3 iterations
    python benchmarks/kmeans_speed.py --sizes 65536 --iterations 5
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from asmk_scale import rootsift_images  # noqa: E402

from glocal.index.codebook import Codebook  # noqa: E402
from glocal.index.kmeans import approximate_kmeans  # noqa: E402


def faiss_kmeans(x: np.ndarray, k: int, iterations: int, seed: int) -> np.ndarray:
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=iterations, seed=seed, verbose=False, max_points_per_centroid=10**8)
    km.train(x)
    return km.centroids


def held_out_mse(centroids: np.ndarray, x: np.ndarray) -> float:
    nearest = Codebook(centroids).assign(x)[:, 0]
    return float(((x - centroids[nearest]) ** 2).sum(1).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[16_384, 65_536])
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    x = np.concatenate(rootsift_images(args.seed))
    x = x[np.random.default_rng(args.seed).permutation(len(x))]
    train, test = x[:-20_000], x[-20_000:]
    print(f"RootSIFT: {len(train):,} training + {len(test):,} held-out descriptors; {args.iterations} iterations; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| words | method | seconds | s / iteration | held-out MSE | MSE of the random init "
          "| s / iteration at 39 x words descriptors (extrapolated) |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        init = train[np.sort(np.random.default_rng(args.seed).choice(len(train), size, replace=False))]
        for method in ("faiss", "approximate"):
            t0 = time.perf_counter()
            if method == "faiss":
                centroids = faiss_kmeans(train, size, args.iterations, args.seed)
            else:
                centroids = approximate_kmeans(train, size, args.iterations, seed=args.seed)[0]
            seconds = time.perf_counter() - t0
            per_it = seconds / args.iterations
            print(f"| {size:,} | {method} | {seconds:.1f} | {per_it:.1f} | {held_out_mse(centroids, test):.5f} "
                  f"| {held_out_mse(init, test):.5f} | {per_it * 39 * size / len(train):.0f} |", flush=True)


if __name__ == "__main__":
    main()
