"""Short training runs on synthetic data: do a few hundred optimiser steps lower every training loss?

The unit tests train each deep model for 8-25 steps only (they must stay quick); this script backs the
claim "a few hundred steps on synthetic data lower every loss". For every model it runs ``--steps``
seeded optimiser steps from a random initialisation (no pretrained weights, nothing downloaded) through
the package's public training APIs and reports, per loss, the mean over the first 10 and the last 10
steps, whether it fell, and the seconds per step:

* ``delg``: :meth:`glocal.models.delg.Delg.losses` (ResNet-50), ArcFace ``global``, ``attention`` CE and
  ``reconstruction`` MSE, trained together on ``total`` (Adam, backbone 1e-4, heads 1e-3).
* ``dolg``: :meth:`glocal.models.dolg.Dolg.losses` (ResNet-50), the ArcFace loss (Adam 1e-4).
* ``fire``: :class:`glocal.models.fire.FireNet` (R50- trunk, LIT N = 256, T = 6, d = 1024, frozen
  PCA-whitening fitted before training) with :func:`glocal.train.fire_losses.fire_tuple_loss`: L_super
  (eq. 8) and L_attn (eq. 9) on tuples (query, positive, 2 negatives) (Adam 1e-4).
* ``vitgal``: :class:`glocal.models.vitgal.Vitgal` (XCiT-S12): first the ArcFace ``global`` loss on the
  whole network, then ``--steps`` more steps of the autoencoder (``classification``, ``reconstruction``)
  with the rest frozen (:meth:`~glocal.models.vitgal.Vitgal.autoencoder_losses`).
* ``detector``: the FCOS :class:`glocal.models.detector.LandmarkDetector` (EfficientNet-Lite0 trunk, random)
  trained by :func:`glocal.train.detector_data.train_detector` on bright rectangles over dark noise (its total
  loss: focal + GIoU + centerness).

Data are learnable: a class is a fixed random pattern (a colour and a texture), every sample adds fresh
noise (64 x 64 images, 4 classes, batches of 8); FIRe draws 2 tuples per step from 8 classes, the
positive a shifted, noisy copy of the query's class pattern, the negatives 2 other classes. A loss "fell" when its last-10 mean is below its first-10
mean. Exit status 1 when some loss did not fall.

Usage: ``python benchmarks/train_synthetic.py [--steps N] [--models delg dolg fire vitgal detector]
[--device cpu|cuda] [--threads 2] [--seed 0]`` (without ``--steps``: the per-model defaults of
``DEFAULT_STEPS``).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from glocal.train.detector_data import AugmentConfig, DetectorBoxDataset, synthetic_box_images, train_detector  # noqa: E402

WINDOW = 10  # steps averaged at the start and at the end
MODELS = ("delg", "dolg", "fire", "vitgal", "detector")
DEFAULT_STEPS = {"delg": 300, "dolg": 300, "fire": 300, "vitgal": 300, "detector": 300}
IMAGE_SIZE, NUM_CLASSES, BATCH = 64, 4, 8

Step = Callable[[int], dict[str, float]]


@dataclass(frozen=True)
class LossCurve:
    """One loss of one model: its value at every step and the mean time of a step."""

    model: str
    loss: str
    values: list[float]
    seconds_per_step: float

    @property
    def first(self) -> float:
        return float(np.mean(self.values[:WINDOW]))

    @property
    def last(self) -> float:
        return float(np.mean(self.values[-WINDOW:]))

    @property
    def fell(self) -> bool:
        return self.last < self.first


@contextmanager
def quiet() -> Iterator[None]:
    """Hide the "RANDOM weights" / "NO pretrained weights" warnings of the random-init builders."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


class Progress:
    """Prints a step's losses and the rate about five times per run."""

    def __init__(self, label: str, steps: int) -> None:
        self.label, self.steps, self.start = label, steps, time.perf_counter()
        self.every = max(1, steps // 5)

    def __call__(self, step: int, losses: dict[str, float]) -> None:
        if step % self.every and step != self.steps:
            return
        rate = step / (time.perf_counter() - self.start)
        values = ", ".join(f"{k} {v:.4f}" for k, v in losses.items())
        print(f"  {self.label}: step {step}/{self.steps}, {rate:.2f} steps/s, {values}", flush=True)


def train(model: str, label: str, step: Step, steps: int) -> list[LossCurve]:
    """Run ``step(i)`` (one optimiser step, returning its losses) ``steps`` times."""
    progress, history = Progress(label, steps), {}
    for i in range(steps):
        losses = step(i)
        for name, value in losses.items():
            history.setdefault(name, []).append(value)
        progress(i + 1, losses)
    per_step = (time.perf_counter() - progress.start) / steps
    return [LossCurve(model, name, values, per_step) for name, values in history.items()]


class PatternData:
    """Classes = fixed random patterns (colour + texture); every image drawn adds fresh noise."""

    def __init__(self, classes: int, size: int, seed: int, device: str) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.classes, self.size, self.device = classes, size, device
        self.colour = torch.randn(classes, 3, 1, 1, generator=self.gen)
        self.texture = torch.randn(classes, 3, size, size, generator=self.gen)

    def images(self, labels: Tensor) -> Tensor:
        noise = torch.randn(len(labels), 3, self.size, self.size, generator=self.gen)
        return (self.colour[labels] + 0.5 * self.texture[labels] + 0.3 * noise).to(self.device)

    def batch(self, n: int = BATCH) -> tuple[Tensor, Tensor]:
        labels = torch.arange(n) % self.classes
        return self.images(labels), labels.to(self.device)

    def fire_tuple(self, negatives: int = 2) -> Tensor:
        """(2 + negatives, 3, H, W): query, positive (shifted by up to 4 px, new noise), negatives."""
        order = torch.randperm(self.classes, generator=self.gen)
        query, positive = self.images(order[:1].repeat(2)).unbind(0)
        shift = tuple(int(s) for s in torch.randint(-4, 5, (2,), generator=self.gen))
        positive = torch.roll(positive, shifts=shift, dims=(1, 2))
        return torch.cat([query[None], positive[None], self.images(order[1:1 + negatives])])


def classification_step(net: torch.nn.Module, opt: torch.optim.Optimizer, data: PatternData,
                        loss_fn: Callable[[Tensor, Tensor], dict[str, Tensor]], keys: tuple[str, ...]) -> Step:
    def step(_: int) -> dict[str, float]:
        x, labels = data.batch()
        losses = loss_fn(x, labels)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        opt.step()
        return {k: float(losses[k].detach()) for k in keys}
    return step


def run_delg(steps: int, device: str, seed: int) -> list[LossCurve]:
    from glocal.models.delg import Delg, DelgModelConfig

    torch.manual_seed(seed)
    with quiet():
        net = Delg(DelgModelConfig(num_classes=NUM_CLASSES)).to(device).train()
    backbone = [p for n, p in net.named_parameters() if n.startswith("backbone.")]
    heads = [p for n, p in net.named_parameters() if not n.startswith("backbone.")]
    opt = torch.optim.Adam([{"params": backbone, "lr": 1e-4}, {"params": heads, "lr": 1e-3}])
    data = PatternData(NUM_CLASSES, IMAGE_SIZE, seed + 1, device)
    step = classification_step(net, opt, data, net.losses, ("global", "attention", "reconstruction", "total"))
    return train("delg", "DELG", step, steps)


def run_dolg(steps: int, device: str, seed: int) -> list[LossCurve]:
    from glocal.models.dolg import Dolg, DolgModelConfig

    torch.manual_seed(seed)
    with quiet():
        net = Dolg(DolgModelConfig(num_classes=NUM_CLASSES)).to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    data = PatternData(NUM_CLASSES, IMAGE_SIZE, seed + 2, device)
    return train("dolg", "DOLG", classification_step(net, opt, data, net.losses, ("global",)), steps)


def run_fire(steps: int, device: str, seed: int, tuples_per_step: int = 2) -> list[LossCurve]:
    from glocal.models.fire import FireNet
    from glocal.train.fire_losses import fire_tuple_loss

    torch.manual_seed(seed)
    with quiet():
        net = FireNet().to(device).train()
    data = PatternData(NUM_CLASSES * 2, IMAGE_SIZE, seed + 3, device)
    with torch.no_grad():  # o(.) is fitted once on the initial Super-features, then stays frozen
        sample = [net.super_features(data.fire_tuple()).raw.flatten(0, 1) for _ in range(2)]
        net.whiten.fit(torch.cat(sample))
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4)

    def step(_: int) -> dict[str, float]:
        opt.zero_grad(set_to_none=True)
        totals = {"L_super": 0.0, "L_attn": 0.0, "pairs": 0.0}
        for _ in range(tuples_per_step):
            out = net.super_features(data.fire_tuple())
            losses = fire_tuple_loss(out.descriptors, out.attention)
            losses.total.backward()
            totals["L_super"] += losses.super_loss.item()
            totals["L_attn"] += losses.attention_loss.item()
            totals["pairs"] += losses.num_pairs
        opt.step()
        return totals

    curves = train("fire", "FIRe", step, steps)
    pairs = next(c for c in curves if c.loss == "pairs")
    print(f"  FIRe: eligible pairs per step (eq. 7), first {WINDOW}: {pairs.first:.1f}, last {WINDOW}: {pairs.last:.1f}")
    return [c for c in curves if c.loss != "pairs"]


def run_vitgal(steps: int, device: str, seed: int) -> list[LossCurve]:
    from glocal.models.vitgal import Vitgal, VitgalModelConfig

    torch.manual_seed(seed)
    net = Vitgal(VitgalModelConfig(num_classes=NUM_CLASSES)).to(device).train()
    data = PatternData(NUM_CLASSES, IMAGE_SIZE, seed + 4, device)
    trunk = [p for n, p in net.named_parameters() if not n.startswith("autoencoder.")]
    opt = torch.optim.Adam(trunk, lr=1e-4)

    def global_losses(x: Tensor, labels: Tensor) -> dict[str, Tensor]:
        losses = net.losses(x, labels)
        return losses | {"total": losses["global"]}

    curves = train("vitgal", "ViTGaL global", classification_step(net, opt, data, global_losses, ("global",)), steps)
    ae_opt = torch.optim.Adam(net.autoencoder.parameters(), lr=1e-3)
    step = classification_step(net, ae_opt, data, net.autoencoder_losses, ("classification", "reconstruction", "total"))
    ae_curves = train("vitgal", "ViTGaL autoencoder", step, steps)
    return curves + [LossCurve(c.model, f"autoencoder {c.loss}", c.values, c.seconds_per_step) for c in ae_curves]


def run_detector(steps: int, device: str, seed: int) -> list[LossCurve]:
    from glocal.models.detector import DetectorConfig, LandmarkDetector

    images, boxes = synthetic_box_images(16, seed + 5)
    dataset = DetectorBoxDataset(boxes, images.__getitem__, AugmentConfig(96, 128, 0.5), seed=seed)
    torch.manual_seed(seed)
    with quiet():
        detector = LandmarkDetector(DetectorConfig(input_size=128, pretrained_backbone=False, device=device))
    progress = Progress("detector (FCOS)", steps)
    values = train_detector(detector, dataset, steps=steps, lr=1e-3, seed=seed, batch_size=4,
                            log=lambda i, loss: progress(i, {"total": loss}))
    return [LossCurve("detector", "total (focal + GIoU + centerness)", values, (time.perf_counter() - progress.start) / steps)]


RUNNERS: dict[str, Callable[[int, str, int], list[LossCurve]]] = {
    "delg": run_delg, "dolg": run_dolg, "fire": run_fire, "vitgal": run_vitgal, "detector": run_detector,
}


def markdown_table(curves: list[LossCurve]) -> str:
    rows = ["| model | loss | first 10 steps | last 10 steps | fell | steps | s/step |", "|---|---|---|---|---|---|---|"]
    for c in curves:
        change = 100 * (c.last - c.first) / abs(c.first) if c.first else float("nan")
        fell = f"yes ({change:+.0f} %)" if c.fell else f"**NO** ({change:+.0f} %)"
        rows.append(f"| {c.model} | {c.loss} | {c.first:.4g} | {c.last:.4g} | {fell} | {len(c.values)} "
                    f"| {c.seconds_per_step:.3f} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="steps per model (default: DEFAULT_STEPS)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 was faster than 2 here, even idle)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.steps is not None and args.steps < 2 * WINDOW:
        parser.error(f"--steps must be >= {2 * WINDOW} (first and last {WINDOW} steps are compared)")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, load average {os.getloadavg()[0]:.2f}", flush=True)
    start, curves = time.perf_counter(), []
    for name in args.models:
        steps = args.steps or DEFAULT_STEPS[name]
        t0 = time.perf_counter()
        print(f"{name}: {steps} steps", flush=True)
        curves += RUNNERS[name](steps, args.device, args.seed)
        print(f"{name}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s, load average now {os.getloadavg()[0]:.2f}\n")
    print(markdown_table(curves))
    failed = [f"{c.model} {c.loss}" for c in curves if not c.fell]
    if failed:
        print(f"\nDid not fall: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
