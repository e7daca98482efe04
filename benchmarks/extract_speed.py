"""Extraction latency of the deep methods on square 1024 x 1024 images (the DELG appendix's Table 1 setting).

Times ``extractor.extract(image)`` end to end (normalisation, pyramid, network, keypoint selection,
fusion) on a random 1024 x 1024 image, after ``--warmup`` untimed calls; prints the median and minimum
over ``--repeats`` timed calls, the device, the torch thread count and the machine's load.

``--scales 1``: scale 1 only. ``--scales 3``: the 3 global scales {0.7071, 1, 1.4142} (for DELG also
the local scales: the paper's "3 scales global & local" rows). ``--scales 7`` (DELG: 7 local + 3 global,
the official setting) and ``--scales 5`` (DOLG's official 5) are accepted too. Weights are random
(timing does not depend on them); ``--attention-threshold 0`` makes DELG select the full 1,000 features.

``--runtime onnx`` runs the DELG / DOLG / ViTGaL network with ONNX Runtime on the CPU
(:mod:`glocal.models.onnx_runtime`); ``--runtime torch-bf16`` runs it (HOW / FIRe: their trunk) under
bfloat16 autocast; repeat ``--runtime`` to compare. The ONNX export (or loading the
cached graph) happens on an extra first call, excluded from the timings and shown as "setup s".

HOW / FIRe run their 7 scales (``--scales 7``) or scale 1; ViTGaL its global scale (``--scales 1``) or
global + its 5 local scales (``--scales 5``); ``--method detector-lite0|detector-lite2`` times the
landmark detector of Detect-to-Retrieve (:mod:`glocal.models.detector`, EfficientNet-Lite0 / -Lite2 trunk, the
image resized to its default longer side of 512) on the same image.

Usage: ``python benchmarks/extract_speed.py --method delg|delg-star|dolg|how|fire|vitgal|detector-lite0|
detector-lite2 [--scales 1|3|5|7] [--runtime torch|torch-bf16|onnx] [--device cpu|cuda] [--repeats 3] [--warmup 1]
[--threads N]``
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from glocal.io.images import LoadedImage  # noqa: E402
from glocal.methods import create_extractor  # noqa: E402
from glocal.models.configs import DELG_GLOBAL_SCALES, DELG_LOCAL_SCALES, DOLG_SCALES  # noqa: E402

SCALE_SETS = {1: (1.0,), 3: DELG_GLOBAL_SCALES, 5: DOLG_SCALES, 7: DELG_LOCAL_SCALES}


class _DetectorAsExtractor:
    """Times a landmark detector through the extractor interface (returns no features)."""

    def __init__(self, backbone: str, device: str) -> None:
        from glocal.models.detector import DetectorConfig, LandmarkDetector

        self.detector = LandmarkDetector(DetectorConfig(backbone=backbone, pretrained_backbone=False, device=device))

    def extract(self, image: LoadedImage, name: str) -> object:
        self.detector.detect(image)

        class _Empty:
            num_features = 0

        return _Empty()


ONNX_METHODS = ("delg", "delg-star", "dolg", "vitgal")


def build(method: str, n_scales: int, device: str, threshold: float, runtime: str = "torch") -> object:
    scales = SCALE_SETS[n_scales]
    if method.startswith("detector-"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return _DetectorAsExtractor(f"efficientnet-{method.removeprefix('detector-')}", device)
    if method == "vitgal":
        conf = dict(scales=scales if n_scales > 1 else (1.0,), device=device)
        if n_scales == 1:
            conf["max_keypoints"] = 0
    elif method in ("delg", "delg-star"):
        global_scales = scales if n_scales in (1, 3) else DELG_GLOBAL_SCALES
        conf = dict(scales=scales, global_scales=global_scales, attention_threshold=threshold, device=device)
    else:
        conf = dict(scales=scales, device=device)
    if runtime != "torch":
        conf["runtime"] = runtime
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return create_extractor(method, **conf)


def time_extractor(extractor: object, repeats: int, warmup: int, device: str, seed: int
                   ) -> tuple[list[float], int, float]:
    """Per-call milliseconds of the timed calls, the number of local features of the last call, and the
    seconds of an untimed first call made before the warm-up ones when the extractor runs ONNX (export or
    cache load; NaN otherwise)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    image = LoadedImage(pixels, (1024, 1024), 1.0)
    setup = float("nan")
    if getattr(extractor, "_onnx", None) is not None:
        t = time.perf_counter()
        extractor.extract(image, "setup")
        setup = time.perf_counter() - t
    times, n_local = [], 0
    for i in range(warmup + repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        n_local = extractor.extract(image, "bench").num_features
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - t) * 1000)
    return times, n_local, setup


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--method", required=True, choices=(
        "delg", "delg-star", "dolg", "how", "fire", "vitgal", "detector-lite0", "detector-lite2"))
    p.add_argument("--scales", type=int, choices=sorted(SCALE_SETS), action="append",
                   help="number of pyramid scales; repeat for several rows (default: 1 and 3)")
    p.add_argument("--runtime", choices=("torch", "torch-bf16", "onnx"), action="append",
                   help="network runtime (onnx: ONNX Runtime, CPU; delg, delg-star, dolg, vitgal); repeat for "
                        "several rows (default: torch)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--attention-threshold", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    runtimes = args.runtime or ["torch"]
    if "onnx" in runtimes and args.method not in ONNX_METHODS:
        p.error(f"--runtime onnx supports {', '.join(ONNX_METHODS)}")
    if args.method.startswith("detector-") and set(runtimes) != {"torch"}:
        p.error("the detectors run with --runtime torch only")
    if args.threads:
        torch.set_num_threads(args.threads)
    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else platform.processor() or "cpu"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {args.method} extraction latency, 1024 x 1024 image, device {args.device} ({device_name}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load {load:.1f}")
    print(f"# {args.warmup} warm-up + {args.repeats} timed calls; random weights")
    if "onnx" in runtimes:
        print("# onnx: ONNX export / cached-graph load excluded from the timings (an extra first call, 'setup s')")
    print("| method | runtime | scales | median ms | min ms | local features | setup s |")
    print("|---|---|---|---|---|---|---|")
    for n in args.scales or [1, 3]:
        for runtime in runtimes:
            extractor = build(args.method, n, args.device, args.attention_threshold, runtime)
            times, n_local, setup = time_extractor(extractor, args.repeats, args.warmup, args.device, args.seed)
            setup_s = "" if setup != setup else f"{setup:.1f}"
            print(f"| {args.method} | {runtime} | {n} | {statistics.median(times):.0f} | {min(times):.0f} | {n_local} "
                  f"| {setup_s} |", flush=True)


if __name__ == "__main__":
    main()
