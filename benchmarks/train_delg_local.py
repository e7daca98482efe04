"""Proof of ``glocal train``'s classification regime on this machine: a DELG attention + autoencoder local
head trained on a FROZEN package-shipped ImageNet backbone, its local features compared with SIFT on the
Oxford affine pairs.

    nice -n 10 python benchmarks/train_delg_local.py [--out /tmp/delg-local] [--steps 400] [--batch 16]
        [--image-size 256] [--lr 1e-3] [--backbone efficientnet-lite0] [--seed 0] [--px 3]

1. Labels from the mini revisited ground truth of BOTH cities (``glocal.train.data.read_gnd``: a landmark is
   the queries whose positives overlap, its members their easy + hard images; images of no landmark left
   out), written as ``OUT/labels.csv`` with absolute paths (read by path, never copied).
2. ``glocal train delg --data OUT/labels.csv --freeze-backbone --global-weight 0 ...``: only the local heads
   train (DELG's attention loss + 10 x reconstruction loss, Adam); the backbone's maps are computed once.
3. ``benchmarks/local_features.py --part matching --methods sift delg-init delg-trained``: 2,000 features per
   image, mutual nearest neighbours, correct within ``--px`` under the ground-truth homography.

Nothing here was tuned on the affine pairs: the settings were fixed before the first matching run
(``--lr 1e-3`` for heads alone was chosen on synthetic shapes in tests/train).
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared"


def write_labels(out: Path, revisitop: Path) -> Path:
    from glocal.train.data import read_gnd

    rows = []
    for city in ("roxford5k", "rparis6k"):
        ts = read_gnd(revisitop / f"gnd_{city}_subset.pkl", revisitop / city / "jpg")
        rows += [(str(f.resolve()), f"{city}/{ts.class_names[c]}") for f, c in zip(ts.files, ts.labels) if c >= 0]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "labels.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label"])
        w.writerows(rows)
    print(f"{path}: {len(rows)} images, {len({r[1] for r in rows})} classes")
    return path


def run(cmd: list[str]) -> float:
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/delg-local"))
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--px", type=float, default=3.0)
    ap.add_argument("--revisitop", type=Path, default=SHARED / "data/mini-revisitop")
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    labels = write_labels(args.out, args.revisitop)
    model = args.out / "run" / "model.pt"
    glocal = [sys.executable, "-m", "glocal"]
    t_train = run(glocal + ["train", "delg", "--data", str(labels), "--out", str(args.out / "run"),
                            "--set", f"backbone={args.backbone}", "--freeze-backbone", "--global-weight", "0",
                            "--lr", str(args.lr), "--image-size", str(args.image_size), "--batch", str(args.batch),
                            "--steps", str(args.steps), "--eval-fraction", "0", "--seed", str(args.seed),
                            "--checkpoint-every", str(max(args.steps // 4, 1))])
    print(f"training: {t_train:.0f} s wall, load average {os.getloadavg()}")
    run([sys.executable, str(HERE / "local_features.py"), "--part", "matching", "--methods", "sift", "delg-init",
         "delg-trained", "--delg", str(model), "--delg-backbone", args.backbone, "--px", str(args.px),
         "--json", str(args.out / f"matching-{args.px:g}px.json")])
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
