"""Parameters and CPU time of every backbone's forward pass to its stride-16 and stride-32 maps.

Usage: python benchmarks/backbone_speed.py [--side 1024] [--repeats 3] [--threads 2]
Random weights (speed does not depend on them); one (1, 3, side, 3/4 side) image; the median of ``repeats``
timed runs after one warm-up; channels_last, float32, torch.inference_mode (as the extractors run).
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from glocal.models import backbones


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(1, 3, args.side * 3 // 4, args.side).to(memory_format=torch.channels_last)
    print(f"| backbone | parameters | res4 (/16) | res5 (/32) | ms at {args.side} px ({args.threads} threads) |")
    print("|---|---|---|---|---|")
    for name in backbones.BACKBONE_NAMES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            net = backbones.build(name, backbones.RANDOM).eval().to(memory_format=torch.channels_last)
        params = sum(p.numel() for p in net.parameters())
        times = []
        with torch.inference_mode():
            for i in range(args.repeats + 1):
                start = time.perf_counter()
                out = net(x)
                if i:
                    times.append((time.perf_counter() - start) * 1000)
        shapes = {k: f"{v.shape[1]} x {v.shape[2]} x {v.shape[3]}" for k, v in out.items()}
        print(f"| {name} | {params / 1e6:.1f} M | {shapes['res4']} | {shapes['res5']} | {statistics.median(times):,.0f} |")


if __name__ == "__main__":
    main()
