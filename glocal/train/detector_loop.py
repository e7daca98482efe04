"""The one training loop of the landmark detector (Detect-to-Retrieve, Teichmann et al., CVPR 2019, section 4;
regime ``detector`` of ``glocal train``, and :func:`glocal.train.detector_data.train_detector`).

A *step* is one optimizer update over ``accumulate`` micro-batches of ``batch`` augmented images
(:class:`~glocal.train.detector_data.DetectorBoxDataset`); the loss is the sum of the detector's terms (FCOS
focal classification + GIoU box + centerness, :mod:`glocal.models.detection.losses`; the paper trained SSD and
Faster R-CNN with their own losses, D2R section 5.1). AdamW (default) or SGD with momentum 0.9, gradients clipped
to norm ``clip_norm``, the learning rate multiplied by ``lr_gamma`` after each step.

Seeded and resumable like the other regimes (:mod:`glocal.train.checkpointing`): one ``torch.Generator`` draws
each epoch's order of the images (``randperm``; a batch that would run past the end starts the next epoch),
augmentation is drawn from ``(seed, epoch, index)``; a checkpoint every ``checkpoint_every`` steps holds the
model, optimizer, scheduler, scaler, random states, the epoch's order and the position in it and the log, so a
resumed run reaches bit-identical weights. With a run folder: ``RUN/log.csv`` (and TensorBoard event files
when installed, :class:`glocal.train.runtime.RunLog`), one row per step; the evaluation hook (every
``eval_every`` steps, at step 0 and at the end) runs the detector on held-out images and logs the mean IoU of
each true box with its best detected box (0 when nothing is detected: a collapse shows) and AP at IoU 0.5
(:func:`box_metrics`). On CUDA: ``amp`` (bf16 / fp16 autocast) and channels_last. Under ``torchrun``:
DistributedDataParallel; each step takes ``world x batch`` images of the order, rank ``r`` every ``world``-th
from ``r``; rank 0 alone evaluates and writes. Batch norms that train (a random trunk; a trained one keeps them
frozen) are not synchronised: DDP sends rank 0's statistics to every rank before each forward, and rank 0's are
exported.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from glocal.errors import BadInputError, BadOptionError
from glocal.models.detection.decode import box_iou
from glocal.progress import Progress, no_progress
from glocal.train import runtime
from glocal.train.checkpointing import latest_state, optimisation_state, restore_optimisation, save_state

STATE_FORMAT = "glocal/train-detector-state/1"
LOG_FIELDS = ("step", "epoch", "loss", "classification_loss", "box_loss", "centerness_loss", "lr", "images_per_s",
              "eval_iou", "eval_ap50")
OPTIMIZERS = ("adamw", "sgd")


class DivergedError(BadOptionError, FloatingPointError):
    """The loss became NaN or infinite (exit status 2: the settings, usually the learning rate, are at fault)."""


@dataclass(frozen=True)
class DetectorTrainConfig(runtime.RunOptions):
    """Settings of :func:`fit_detector` (module docstring). ``image_size``: the largest longer side of the
    augmented images (drawn from ``[image_size // 2, image_size]``, :mod:`glocal.train.detector_run`);
    ``workers``, ``cache_images``: the decoding threads and decoded images kept (:mod:`glocal.train.batches`;
    used by :mod:`glocal.train.detector_run`, which builds the dataset)."""

    steps: int = 100
    batch: int = 4
    accumulate: int = 1
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    lr_gamma: float = 1.0
    clip_norm: float = 10.0
    image_size: int = 640
    flip_prob: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        runtime.check_counts(self, ("steps", "batch", "accumulate"), ())
        if self.image_size < 64:
            raise BadOptionError(f"--image-size must be >= 64 for the detector, got {self.image_size}")
        if self.optimizer not in OPTIMIZERS:
            raise BadOptionError(f"--optimizer must be one of {', '.join(OPTIMIZERS)} for the detector, "
                                 f"got {self.optimizer!r}")
        if not self.lr > 0 or not self.lr_gamma > 0 or self.weight_decay < 0 or self.clip_norm < 0:
            raise BadOptionError("--lr and lr_gamma must be > 0, weight_decay and clip_norm >= 0")
        runtime.check_probability(self, "flip_prob")


@dataclass
class DetectorResult:
    """What a run did: the model (in eval mode), the log rows, the last step, the data problems met."""

    network: nn.Module
    history: list[dict[str, float]]
    step: int
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.history if not math.isnan(r["loss"])]

    def evaluations(self) -> list[tuple[int, float, float]]:
        """(step, mean IoU, AP@0.5) of every evaluation."""
        return [(int(r["step"]), r["eval_iou"], r["eval_ap50"]) for r in self.history
                if not math.isnan(r.get("eval_iou", math.nan))]


def box_metrics(detections: Sequence[tuple[np.ndarray, np.ndarray]], truths: Sequence[np.ndarray],
                iou_threshold: float = 0.5) -> tuple[float, float]:
    """(mean IoU, AP) of per-image ``(boxes (R, 4), scores (R,))`` against true boxes ``(K, 4)``, same frame.

    Mean IoU: every true box's largest IoU with a detected box (0 when none), averaged over all true boxes.
    AP: detections of all images ranked by score; one is a true positive when its best-overlapping true box
    not yet taken has IoU >= ``iou_threshold`` (greedy, best score first); AP = sum over the ranks k of true
    positives of precision@k / number of true boxes (area under the precision-recall curve, as the VOC
    all-point AP without interpolation). Both NaN without true boxes.
    """
    total = sum(len(t) for t in truths)
    if total == 0:
        return math.nan, math.nan
    best: list[float] = []
    ranked: list[tuple[float, int, int]] = []
    ious: dict[int, np.ndarray] = {}
    for img, ((boxes, scores), truth) in enumerate(zip(detections, truths)):
        if len(truth) and len(boxes):
            ious[img] = box_iou(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                torch.as_tensor(truth, dtype=torch.float32).reshape(-1, 4)).numpy()
            best += ious[img].max(axis=0).tolist()
        else:
            best += [0.0] * len(truth)
        ranked += [(float(s), img, k if len(truth) else -1) for k, s in enumerate(scores)]
    taken: set[tuple[int, int]] = set()
    hits, ap = 0, 0.0
    for rank, (_, img, k) in enumerate(sorted(ranked, key=lambda r: -r[0]), start=1):
        if k < 0:
            continue
        row = ious[img][k].copy()
        for j in range(len(row)):
            if (img, j) in taken:
                row[j] = -1.0
        j = int(row.argmax())
        if row[j] >= iou_threshold:
            taken.add((img, j))
            hits += 1
            ap += hits / rank
    return float(np.mean(best)), ap / total


def _optimizer(params: list[nn.Parameter], config: DetectorTrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)


def fit_detector(model: nn.Module, dataset: torch.utils.data.Dataset, config: DetectorTrainConfig,
                 run: str | Path | None = None, held_out: Sequence[tuple[np.ndarray, np.ndarray] | None] = (),
                 resume: bool = False, progress: Progress = no_progress,
                 on_log: Callable[[dict[str, float]], None] | None = None,
                 say: Callable[[str], None] | None = None) -> DetectorResult:
    """Train ``model`` (a :class:`~glocal.models.detector.LandmarkDetector`, or any module whose training-mode
    ``forward(images, targets)`` returns a dict of loss terms) in place on ``dataset`` (module docstring).

    :param dataset: ``dataset[i]`` -> (image (3, H, W) in [0, 1], {"boxes": (K, 4)}), or None for an image
        found unreadable (left out of its batch), with ``set_epoch``; optionally ``prefetch(rows)`` (called with
        the rows of the current and the next batch) and ``skipped`` (path -> reason of the files found
        unreadable, saved in checkpoints and restored on resume:
        :class:`~glocal.train.detector_images.StreamedBoxDataset`).
    :param run: the run folder (checkpoints, log); None: neither (and no resume).
    :param held_out: (pixels (H, W, 3) uint8, true boxes (K, 4) in those pixels) for the evaluation hook
        (``model.detect_pixels`` needed), iterated once per evaluation (a lazy sequence decodes as it goes:
        :class:`~glocal.train.detector_images.BoxImages`); a None item (unreadable) is left out.
    :param on_log: called with every log row (rank 0 only).
    :param say: where one-line notes go (ignored options, no tensorboard); default stderr.
    """
    run = Path(run) if run is not None else None
    ranks, device, started = runtime.start(config.device)
    main = ranks.main
    if run is not None and main:
        run.mkdir(parents=True, exist_ok=True)
    precision = runtime.resolve_precision(config.amp, config.channels_last, device)
    for note in precision.notes if main else ():
        (say or runtime._stderr)(note)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model.to(device)
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)
    if hasattr(model, "config") and dataclasses.is_dataclass(model.config) and hasattr(model.config, "device"):
        model.config = dataclasses.replace(model.config, device=str(device))  # detect_pixels puts images there
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(params, config)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_gamma)
    scaler = torch.amp.GradScaler("cuda", enabled=precision.scaler_enabled)
    n = len(dataset)  # type: ignore[arg-type]
    if n < ranks.world:
        raise BadInputError(f"{n} training images for {ranks.world} processes: each needs one at least")
    per_step = min(config.batch, n // ranks.world) * ranks.world  # the same number of images on every rank
    step, epoch, position = 0, 0, 0
    order = np.zeros(0, dtype=np.int64)
    history: list[dict[str, float]] = []
    skipped: dict[str, str] | None = getattr(dataset, "skipped", None)
    prefetch: Callable[[list[int]], None] | None = getattr(dataset, "prefetch", None)
    if resume:
        if run is None:
            raise BadOptionError("resume needs a run folder")
        state = latest_state(run, STATE_FORMAT, "glocal detector training state")
        model.load_state_dict(state["model"])
        step, epoch, position = restore_optimisation(state, optimizer, scheduler, scaler, generator, device)
        order = state["order"].numpy().copy()
        history = [dict(r) for r in state["history"]]
        if skipped is not None:
            skipped.update(state.get("skipped", {}))
    module = model
    if ranks.distributed:  # after any resume: DDP copies rank 0's weights to every rank
        from torch.nn.parallel import DistributedDataParallel

        module = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    log = runtime.RunLog(run, LOG_FIELDS, enabled=main, say=say) if run is not None else None

    def evaluate() -> tuple[float, float]:
        if not held_out or not main:
            return math.nan, math.nan
        found, truths = [], []
        for item in held_out:  # one image at a time (an unreadable one left out)
            if item is not None:
                found.append(tuple(model.detect_pixels(item[0])))  # type: ignore[operator]
                truths.append(item[1])
        return box_metrics(found, truths)  # type: ignore[arg-type]

    def snapshot() -> dict:
        return {"format": STATE_FORMAT, "step": step, "epoch": epoch, "position": position,
                "order": torch.from_numpy(order), "model": model.state_dict(),
                **optimisation_state(optimizer, scheduler, scaler, generator, device), "history": history,
                "skipped": dict(skipped or {}), "config": dataclasses.asdict(config)}

    def record(row: dict[str, float]) -> None:
        history.append(row)
        if log is not None:
            log.add(row)
        if on_log and main:
            on_log(row)

    blank = {k: math.nan for k in LOG_FIELDS}
    if step == 0 and config.eval_every and held_out:
        iou, ap = evaluate()
        record({**blank, "step": 0, "epoch": 0, "lr": config.lr, "eval_iou": iou, "eval_ap50": ap})

    def next_rows() -> list[int]:
        nonlocal order, position, epoch
        if position + per_step > len(order):
            # the generator's draws of torch's shuffling DataLoader (which train_detector used before this loop
            # existed, so that its runs stay as they were): the remainder permutation its sampler draws at the end
            # of an epoch, the loader's base seed, then the epoch's order
            if epoch > 0:
                torch.randperm(n, generator=generator)
            torch.empty((), dtype=torch.int64).random_(generator=generator)
            epoch += 1
            order = torch.randperm(n, generator=generator).numpy()
            position = 0
        rows = order[position:position + per_step]
        position += per_step
        mine = [int(i) for i in rows[ranks.rank::ranks.world]]
        if prefetch is not None:  # this batch's images, then the next one's while this one trains
            upcoming = order[position:position + per_step] if position + per_step <= len(order) else order[:0]
            prefetch(mine + [int(i) for i in upcoming[ranks.rank::ranks.world]])
        return mine

    model.train()
    advance = progress("training", config.steps - step)
    try:
        while step < config.steps:
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            sums = {"loss": 0.0, "classification": 0.0, "box": 0.0, "centerness": 0.0}
            images = 0
            for micro in range(config.accumulate):
                ids = next_rows()
                dataset.set_epoch(epoch - 1)  # type: ignore[attr-defined]  # augmentation epochs count from 0
                batch = [b for b in (dataset[i] for i in ids) if b is not None]  # an unreadable image left out
                empty = not batch
                if empty and not ranks.distributed:
                    continue
                if empty:  # every rank must run its backward: a zero-weighted blank image
                    batch = [(torch.zeros(3, 64, 64), {"boxes": torch.zeros(0, 4),
                                                        "labels": torch.zeros(0, dtype=torch.int64)})]
                xs = [b[0].to(device) for b in batch]
                targets = [{k: v.to(device) for k, v in b[1].items()} for b in batch]
                with runtime.no_sync(module, micro == config.accumulate - 1), precision.context(device):
                    terms = module(xs, targets)
                    loss = sum(terms.values()) * 0.0 if empty else sum(terms.values())
                if not torch.isfinite(loss):
                    raise DivergedError(f"the detector's loss became {float(loss.detach())} at step {step + 1} (try a lower "
                                        "--lr)")
                with runtime.no_sync(module, micro == config.accumulate - 1):
                    scaler.scale(loss / config.accumulate).backward()
                sums["loss"] += float(loss.detach()) / config.accumulate
                for k in ("classification", "box", "centerness"):
                    sums[k] += (float(terms[k].detach()) * (not empty)) / config.accumulate if k in terms else math.nan
                images += (0 if empty else len(batch)) * ranks.world
            if images or ranks.distributed:  # (not when every image of the step was unreadable)
                if config.clip_norm > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], config.clip_norm)
                scaler.step(optimizer)
                scaler.update()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            step += 1
            mean = {k: runtime.mean_over_ranks(v, ranks, device) for k, v in sums.items()}  # the whole step's
            row = {**blank, "step": step, "epoch": epoch, "loss": mean["loss"], "classification_loss": mean["classification"],
                   "box_loss": mean["box"], "centerness_loss": mean["centerness"], "lr": lr,
                   "images_per_s": images / max(time.perf_counter() - t0, 1e-9)}
            if config.eval_every and held_out and (step % config.eval_every == 0 or step == config.steps):
                row["eval_iou"], row["eval_ap50"] = evaluate()
            record(row)
            advance(1)
            if run is not None and log is not None and config.checkpoint_every and step % config.checkpoint_every == 0 \
                    and main:
                save_state(run, step, snapshot())
                log.write_csv(history)
        if log is not None:
            log.write_csv(history)
    finally:
        if log is not None:
            log.close()
        model.eval()
    runtime.finish(ranks, started)
    return DetectorResult(model, history, step)
