"""Does the landmark detector learn to find boxes? Train it on synthetic rectangles, test on held-out ones.

Training images: ``--train`` 96 x 128 images of dark noise with one bright rectangle of random place and size
(:func:`glocal.train.detector_data.synthetic_box_images`, seed ``--seed``), augmented (longer side 112-128,
flips), ``--steps`` AdamW steps of batch 4 (:func:`glocal.train.detector_data.train_detector`). Test images:
``--test`` images drawn the same way with another seed (never trained on). Reports, for the best-scoring
box of each test image: the mean IoU with the rectangle, the share with IoU > 0.5 and > 0.75, the mean
number of boxes above the score threshold, seconds per training step and milliseconds per detection.

Usage: ``python benchmarks/detector_synthetic.py [--steps 300] [--train 64] [--test 100] [--lr 2e-3]
[--backbone efficientnet-lite0] [--pretrained] [--threads 1] [--seed 0]``
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from glocal.io.images import LoadedImage  # noqa: E402
from glocal.models.detection.decode import box_iou  # noqa: E402
from glocal.models.detector import DetectorConfig, LandmarkDetector  # noqa: E402
from glocal.train.detector_data import AugmentConfig, DetectorBoxDataset, synthetic_box_images, train_detector  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--train", type=int, default=64)
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--pretrained", action="store_true", help="start the trunk from ImageNet (pretrained extra)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average at start: {os.getloadavg()}; torch {torch.__version__}, {args.threads} thread(s)")
    images, boxes = synthetic_box_images(args.train, seed=args.seed)
    data = DetectorBoxDataset(boxes, images.__getitem__, AugmentConfig(112, 128, 0.5), seed=args.seed)
    torch.manual_seed(args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        det = LandmarkDetector(DetectorConfig(backbone=args.backbone, input_size=128,
                                              pretrained_backbone=args.pretrained))
    start = time.perf_counter()
    losses = train_detector(det, data, steps=args.steps, lr=args.lr, seed=args.seed, batch_size=4)
    per_step = (time.perf_counter() - start) / args.steps
    test_images, test_boxes = synthetic_box_images(args.test, seed=args.seed + 1000)
    ious, counts, times = [], [], []
    for ann in test_boxes:
        px = test_images[ann.image_id]
        t = time.perf_counter()
        found, _ = det.detect(LoadedImage(px, px.shape[:2], 1.0))
        times.append(time.perf_counter() - t)
        counts.append(len(found))
        ious.append(float(box_iou(torch.from_numpy(found[:1]), torch.from_numpy(ann.boxes))[0, 0]) if len(found) else 0.0)
    iou = np.array(ious)
    print(f"loss first 10 steps {np.mean(losses[:10]):.3f} -> last 10 {np.mean(losses[-10:]):.3f}; "
          f"{per_step:.3f} s/step")
    print(f"held-out {args.test}: mean IoU of the best box {iou.mean():.3f}; IoU > 0.5: {np.mean(iou > 0.5):.2%}; "
          f"IoU > 0.75: {np.mean(iou > 0.75):.2%}; boxes per image {np.mean(counts):.2f}; "
          f"detect {1000 * np.median(times):.1f} ms (median)")
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
