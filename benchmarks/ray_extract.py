"""Extraction throughput: the single-process path next to Ray with 1 and 2 workers (issue 20 item 3).

Writes ``--images`` images (the demo benchmark's database photos, copied round-robin under new names) and
extracts them into feature shards with the weight-free ``sift`` method, in one run: the single-process path
(``glocal extract``: shards one after the other, ``--threads`` threads inside a shard) with 1 and 2 threads,
then ``glocal extract --ray local --workers W`` for each ``--workers`` value. Each Ray configuration starts
its own local Ray (``ray start s``, not counted in the throughput) and is timed from the first task
submitted to the last shard recorded (worker processes starting and loading the extractor included).
Every Ray run's shard files are checked to be byte for byte those of the single-process path (CRC-32).
Prints a markdown table with the load average before and after each row (the machine may be shared).

Usage: ``python benchmarks/ray_extract.py [--images 100] [--shard-size 10] [--workers 1 2] [--repeats 1]``
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glocal import methods  # noqa: E402
from glocal.demo.synthetic import make_benchmark  # noqa: E402
from glocal.extract.backends import LocalBackend, extract_to_shards  # noqa: E402
from glocal.extract.shards import MANIFEST  # noqa: E402

METHOD = "sift"


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def images(root: Path, count: int) -> list[Path]:
    bench = make_benchmark(root / "demo", seed=0)
    out = root / "images"
    out.mkdir()
    paths = []
    for i in range(count):
        src = bench.db_paths[i % len(bench.db_paths)]
        paths.append(out / f"{i:04d}_{src.name}")
        shutil.copyfile(src, paths[-1])
    return paths


def run(paths: list[Path], out: Path, backend, threads: int, shard_size: int) -> tuple[float, dict]:
    spec = methods.get(METHOD)
    t = time.perf_counter()
    report = extract_to_shards(paths, [p.name for p in paths], out, spec, spec.configure({}), backend=backend,
                               shard_size=shard_size, threads=threads)
    seconds = time.perf_counter() - t
    assert report.extracted == len(paths) and not report.failures, report.failures
    return seconds, json.loads((out / MANIFEST).read_text())["checksums"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--shard-size", type=int, default=10)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per row (the best is shown)")
    args = ap.parse_args()
    import ray

    from glocal.extract.ray_backend import RayBackend

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = images(root, args.images)
        n = 0

        def timed(label: str, backend, threads: int, start: float | None = None) -> dict:
            nonlocal n
            before, best, crcs = load(), float("inf"), {}
            for _ in range(args.repeats):
                n += 1
                seconds, crcs = run(paths, root / f"f{n}", backend, threads, args.shard_size)
                best = min(best, seconds)
            rows.append((label, f"{start:.1f}" if start is not None else "-", f"{best:.2f}",
                         f"{len(paths) / best:.1f}", f"{before} -> {load()}"))
            print(rows[-1], flush=True)
            return crcs

        reference = {}
        for threads in (1, 2):
            reference = timed(f"single process, {threads} thread{'s' if threads > 1 else ''}", LocalBackend(), threads)
        for workers in args.workers:
            t = time.perf_counter()
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="warning",
                     object_store_memory=256 * 1024 * 1024)
            start = time.perf_counter() - t
            crcs = timed(f"Ray local, {workers} worker{'s' if workers > 1 else ''}", RayBackend("local", workers),
                         1, start)
            ray.shutdown()
            assert crcs == reference, "Ray shards differ from the single-process shards"
    print(f"\n{args.images} images ({METHOD}, demo photos), shards of {args.shard_size}, {os.cpu_count()} CPUs, "
          f"best of {args.repeats}; Ray shards identical to the single-process shards (CRC-32)\n")
    print("| path | ray start s | extract s | images/s | load average (1/5/15 min) before -> after |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
