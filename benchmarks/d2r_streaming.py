"""Memory and weights of ``glocal train d2r`` on generated box images (the detector regime reads its images per
batch, :mod:`glocal.train.detector_run`).

``make DIR [--n 200] [--side 640]``: ``n`` JPEG photos (``side`` x ``3/4 side``, a bright rectangle on noise,
seeded) and ``DIR/boxes.csv`` in the ``pixels`` layout. ``hash MODEL.pt``: the SHA-256 of the exported
detector's tensors (names sorted; the card, which names the run folder, left out), to compare two runs' weights.

Peak memory (``benchmarks/d2r_streaming_rss.sh CODE_ROOT N TAG``: 2 steps, batch 2, 20 held-out images, on N
generated 640 x 480 photos), with the code of main and of this branch::

    benchmarks/d2r_streaming_rss.sh /path/to/main 1000 main1000
    benchmarks/d2r_streaming_rss.sh $PWD 1000 new1000
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make(folder: Path, n: int, side: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    h, w = side * 3 // 4, side
    rows = ["id,x1,y1,x2,y2"]
    for k in range(n):
        a = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        x1, y1 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        x2, y2 = x1 + int(rng.integers(w // 8, w // 2)), y1 + int(rng.integers(h // 8, h // 2))
        a[y1:y2, x1:x2] = 230
        Image.fromarray(a).save(folder / f"im{k:05d}.jpg", quality=90)
        rows.append(f"im{k:05d},{x1},{y1},{x2},{y2}")
    (folder / "boxes.csv").write_text("\n".join(rows) + "\n")


def weights_hash(path: Path) -> str:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    m = sub.add_parser("make")
    m.add_argument("folder", type=Path)
    m.add_argument("--n", type=int, default=200)
    m.add_argument("--side", type=int, default=640)
    h = sub.add_parser("hash")
    h.add_argument("model", type=Path)
    args = parser.parse_args()
    if args.what == "make":
        make(args.folder, args.n, args.side)
    else:
        print(weights_hash(args.model))


if __name__ == "__main__":
    main()
