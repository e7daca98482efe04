"""The training loop of the ``tuples`` regimes (:mod:`glocal.train.tuples`): a network that maps one image
(1, 3, H, W) to a global descriptor (1, D) is fine-tuned with the contrastive loss on mined tuples; another loss
on other outputs of the network (FIRe's Super-features) comes in as a :class:`~glocal.train.objectives.TupleObjective`.

What it does, step by step: a *step* is one optimizer update over ``accumulate`` micro-batches of ``batch``
tuples each (gradient accumulation); every image of a tuple runs through the network on its own, at its own
size (longest side ``image_size``), as in cirtorch; batch norms keep their running statistics (eval mode) while
their weights train. Tuples are re-mined with the current network whenever the previous ones are used up (an
*epoch*). Adam with weight decay; the learning rate multiplied by ``lr_gamma`` after each step.

Reproducible: every random choice comes from one ``torch.Generator`` seeded with ``seed``. A checkpoint every
``checkpoint_every`` steps (``RUN/checkpoints/step-NNNNNNN.pt``) holds the network, optimizer, scheduler, the
generator and torch RNG states, the epoch's tuples and the position in them, and the log so far;
``resume=True`` continues from the newest one and reaches bit-identical weights to an uninterrupted run on the
same machine and thread count. ``RUN/log.csv`` has one row per step (loss, learning rate, images/s, and the
held-out mAP on evaluation steps: every ``eval_every`` steps, at step 0 and at the end; images/s leaves out the
time spent mining), also as TensorBoard event files in ``RUN/tensorboard/`` when ``tensorboard`` is installed.
On CUDA, options: mixed precision (``amp``: bf16, or fp16 autocast with a gradient scaler) and channels_last; on
the CPU they are ignored with a note (plain float32). Under ``torchrun``: DistributedDataParallel, the tuples
sharded over the ranks, rank 0 alone writing (:mod:`glocal.train.runtime`). Images are read per batch on
``workers`` threads with at most ``cache_images`` kept; files found unreadable are reported once and skipped
(:mod:`glocal.train.batches`).
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
from torch import Tensor, nn

from glocal.errors import BadInputError, BadOptionError
from glocal.models.geometry.pyramid import image_to_tensor, preprocessing_by_name
from glocal.progress import Progress, no_progress
from glocal.train import runtime
from glocal.train.batches import ImageLoader, readable, with_skipped
from glocal.train.checkpointing import (
    latest_state,
    optimisation_state,
    restore_optimisation,
    save_state,
)
from glocal.train.data import TrainingSet
from glocal.train.objectives import TupleObjective, global_objective
from glocal.train.tuples import Tuples, mean_average_precision, mine_tuples, normalised

STATE_FORMAT = "glocal/train-state/1"
LOG_FIELDS = ("step", "epoch", "loss", "lr", "images_per_s", "eval_map")


@dataclass(frozen=True)
class TrainConfig(runtime.RunOptions):
    """Settings of :func:`train_tuples` (defaults: cirtorch's GeM fine-tuning where it has one)."""

    steps: int = 100
    batch: int = 5
    accumulate: int = 1
    lr: float = 1e-6
    weight_decay: float = 1e-6
    lr_gamma: float = 1.0
    margin: float = 0.7
    negatives: int = 5
    queries_per_epoch: int = 0
    pool_size: int = 0
    image_size: int = 512
    frozen_fraction: float = 0.0
    #: each training image of a tuple is mirrored left-right with this probability (FIRe sec. 4: random flipping)
    flip_prob: float = 0.0

    def __post_init__(self) -> None:
        runtime.check_probability(self, "flip_prob")
        super().__post_init__()
        runtime.check_counts(self, ("steps", "batch", "accumulate", "image_size"),
                             ("negatives", "queries_per_epoch", "pool_size"))
        if not 0.0 <= self.frozen_fraction < 1.0:
            raise BadOptionError(f"frozen_fraction must be in [0, 1), got {self.frozen_fraction}")
        if not self.lr > 0 or not self.margin > 0 or not self.lr_gamma > 0:
            raise BadOptionError("--lr, --margin and lr_gamma must be > 0")


@dataclass
class TrainResult:
    """What a run did: the trained network, the log rows, the last step, the data problems met."""

    network: nn.Module
    history: list[dict[str, float]]
    step: int
    problems: list[tuple[str, str]] = field(default_factory=list)

    def evaluations(self) -> list[tuple[int, float]]:
        """(step, held-out mAP) of every evaluation."""
        return [(int(r["step"]), r["eval_map"]) for r in self.history if not math.isnan(r.get("eval_map", math.nan))]


class _Runner:
    """The network on its device with the preprocessing: descriptors (``objective.describe``) and a tuple's
    outputs for the loss."""

    def __init__(self, network: nn.Module, preprocessing: str, device: torch.device, precision: runtime.Precision,
                 objective: TupleObjective) -> None:
        self.network, self.device = network, device
        self.objective = objective  # train_tuples resolves the default (the global loss with the run's margin)
        self.prep = preprocessing_by_name(preprocessing)
        self.precision = precision

    def tensor(self, pixels: np.ndarray) -> Tensor:
        x = image_to_tensor(pixels, self.prep, self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.precision.channels_last else x

    def forward(self, pixels: np.ndarray) -> Tensor:
        with self.precision.context(self.device):
            return self.objective.describe(self.network, self.tensor(pixels)).float()

    def tuple_loss(self, module: nn.Module, pixels: Sequence[np.ndarray]) -> Tensor:
        """The objective's loss of a tuple's images through ``module`` (:func:`glocal.train.runtime.wrap`)."""
        with self.precision.context(self.device):
            return self.objective.loss(module([self.tensor(p) for p in pixels]))

    @torch.no_grad()
    def describe(self, loader: ImageLoader, indices: Sequence[int]) -> Tensor:
        """L2-normalised descriptors of the images; an unreadable one's is a zero row (its tuple is dropped when
        it is the query or the positive; as a mined negative it is left out of its tuple)."""
        was_training = self.network.training
        self.network.eval()
        rows = [normalised(self.forward(p)) if p is not None else None for _, p in loader.stream(indices)]
        dim = next((r.shape[1] for r in rows if r is not None), 1)
        out = torch.cat([r if r is not None else torch.zeros(1, dim, device=self.device) for r in rows])
        self.network.train(was_training)
        if was_training:
            freeze_batchnorm(self.network)
        return out


def _tuple_pixels(loader: ImageLoader, row: np.ndarray) -> tuple[list[np.ndarray] | None, float]:
    """The pixels of a tuple's readable images and the weight of its loss; ``None`` (weight 0) when its query or
    positive is unreadable (an unreadable negative is left out)."""
    pixels = loader.many([int(i) for i in row if i >= 0])
    if pixels[0] is None or pixels[1] is None:
        return None, 0.0
    return [p for p in pixels if p is not None], 1.0


def flip_tuple(pixels: list[np.ndarray], prob: float, seed: int, epoch: int, rank: int, row: int
               ) -> list[np.ndarray]:
    """Each image mirrored left-right with probability ``prob``, drawn from ``default_rng([seed, epoch, rank,
    row])`` (``row``: the tuple's place in this rank's share of the epoch), so a resumed run draws the same
    flips; the mined descriptors are computed on unflipped images."""
    if prob <= 0.0:
        return pixels
    draws = np.random.default_rng([seed, epoch, rank, row]).random(len(pixels))
    return [np.ascontiguousarray(p[:, ::-1]) if d < prob else p for p, d in zip(pixels, draws)]


def _blank_tuple(size: int) -> list[np.ndarray]:
    """Two black images: under DDP a rank whose tuple is unusable still runs a forward and backward (with loss
    weight 0) so that the ranks' gradient all-reduces stay in step."""
    return [np.zeros((min(size, 64), min(size, 64), 3), np.uint8)] * 2


def freeze_batchnorm(network: nn.Module) -> None:
    """Batch norms in eval mode (running statistics fixed; their weights still train)."""
    for m in network.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def trainable_parameters(network: nn.Module, frozen_fraction: float) -> list[nn.Parameter]:
    """The parameters after the first ``frozen_fraction`` of the network's parameter tensors (in definition
    order: the early layers), which are frozen (``requires_grad=False``)."""
    params = list(network.parameters())
    cut = int(len(params) * frozen_fraction)
    for p in params[:cut]:
        p.requires_grad_(False)
    return params[cut:]


def train_tuples(network: nn.Module, preprocessing: str, train: TrainingSet, held_out: TrainingSet | None,
                 config: TrainConfig, run: str | Path, resume: bool = False, progress: Progress = no_progress,
                 on_log: Callable[[dict[str, float]], None] | None = None,
                 say: Callable[[str], None] | None = None, objective: TupleObjective | None = None) -> TrainResult:
    """Fine-tune ``network`` on ``train`` (module docstring); by default ``network`` maps an image to its
    un-normalised global descriptor, trained with the contrastive loss (``config.margin``).

    :param preprocessing: pixel normalisation preset of the network.
    :param held_out: images of classes not trained on, for the evaluation hook (None or empty: no evaluation).
    :param run: the run folder (checkpoints, log).
    :param resume: continue from the newest checkpoint in ``run``.
    :param on_log: called with every log row (rank 0 only).
    :param say: where one-line notes go (ignored options, no tensorboard); default stderr.
    :param objective: network outputs -> loss, and the descriptor mining ranks with
        (:mod:`glocal.train.objectives`; default :func:`~glocal.train.objectives.global_objective`).
    """
    objective = objective or global_objective(config.margin)
    run = Path(run)
    ranks, device, started = runtime.start(config.device)
    if ranks.main:
        run.mkdir(parents=True, exist_ok=True)
    precision = runtime.resolve_precision(config.amp, config.channels_last, device)
    for note in precision.notes if ranks.main else ():
        (say or runtime._stderr)(note)
    train = readable(train, config.workers)
    problems = list(train.problems)
    if held_out is not None and len(held_out.anchors()):
        held_out = readable(held_out, config.workers)
        problems += [p for p in held_out.problems if p not in problems]
    else:
        held_out = None
    if len(train.anchors()) == 0:
        raise BadInputError(f"{train.source}: no class has two readable images; nothing to train on")

    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    network.to(device)
    if precision.channels_last:
        network.to(memory_format=torch.channels_last)
    params = trainable_parameters(network, config.frozen_fraction)
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_gamma)
    scaler = torch.amp.GradScaler("cuda", enabled=precision.scaler_enabled)
    runner = _Runner(network, preprocessing, device, precision, objective)
    skipped: dict[str, str] = {}  # files found unreadable during the run (batches.ImageLoader)
    step, epoch, position = 0, 0, 0
    tuples: Tuples | None = None
    history: list[dict[str, float]] = []

    if resume:
        state = latest_state(run, STATE_FORMAT, "glocal training state")
        network.load_state_dict(state["model"])
        step, epoch, position = restore_optimisation(state, optimizer, scheduler, scaler, generator, device)
        tuples = Tuples(state["tuples"].numpy().copy()) if state["tuples"].numel() else None
        history = [dict(r) for r in state["history"]]
        skipped.update(state.get("skipped", {}))
    loaders = [ImageLoader(d.files, config.image_size, config.cache_images, config.workers,
                           say=(say or runtime._stderr) if ranks.main else None, skipped=skipped)
               for d in (train, held_out) if d is not None]
    loader, eval_loader = loaders[0], loaders[-1]
    module = runtime.wrap(network, ranks, device, objective.outputs)  # after any resume: DDP copies rank 0's weights to every rank
    log = runtime.RunLog(run, LOG_FIELDS, enabled=ranks.main, say=say)

    def evaluate() -> float:
        if held_out is None or not ranks.main:
            return math.nan
        return mean_average_precision(runner.describe(eval_loader, range(len(held_out))), held_out)

    def snapshot() -> dict:
        return {"format": STATE_FORMAT, "step": step, "epoch": epoch, "position": position,
                "tuples": torch.from_numpy(tuples.rows) if tuples is not None else torch.zeros(0, dtype=torch.int64),
                "model": network.state_dict(),
                **optimisation_state(optimizer, scheduler, scaler, generator, device), "history": history,
                "skipped": dict(skipped), "config": dataclasses.asdict(config)}

    if step == 0 and config.eval_every and held_out is not None:
        row = {"step": 0, "epoch": 0, "loss": math.nan, "lr": config.lr, "images_per_s": math.nan,
               "eval_map": evaluate()}
        history.append(row)
        log.add(row)
        if on_log and ranks.main:
            on_log(row)

    mining = [0.0]  # seconds spent mining in the current step (not counted in images/s)

    def next_tuples() -> np.ndarray:
        nonlocal tuples, position, epoch
        if tuples is None or position >= len(runtime.shard(tuples.rows, ranks)):
            t_mine = time.perf_counter()
            epoch += 1
            mined = mine_tuples(train, lambda ids: runner.describe(loader, ids), config.negatives, generator,
                                config.queries_per_epoch, config.pool_size) if ranks.main else None
            tuples = runtime.broadcast(mined, ranks)
            position = 0
            mining[0] += time.perf_counter() - t_mine
        rows = runtime.shard(tuples.rows, ranks)[position:position + config.batch]
        position += len(rows)
        upcoming = runtime.shard(tuples.rows, ranks)[position:position + config.batch]
        for batch_rows in (rows, upcoming):  # the next batch is decoded while this one trains
            loader.prefetch(int(i) for i in batch_rows.ravel() if i >= 0)
        return rows

    network.train()
    freeze_batchnorm(network)
    advance = progress("training", config.steps - step)
    while step < config.steps:
        t0, mining[0] = time.perf_counter(), 0.0
        optimizer.zero_grad(set_to_none=True)
        total, images = 0.0, 0
        for micro in range(config.accumulate):
            rows = next_tuples()
            first_row = position - len(rows)
            for k, row in enumerate(rows):
                pixels, weight = _tuple_pixels(loader, row)
                if pixels is None and not ranks.distributed:
                    continue  # its query or positive is unreadable (reported by the loader)
                if pixels is not None:
                    pixels = flip_tuple(pixels, config.flip_prob, config.seed, epoch, ranks.rank, first_row + k)
                with runtime.no_sync(module, micro == config.accumulate - 1 and k == len(rows) - 1):
                    loss = weight * runner.tuple_loss(module, pixels or _blank_tuple(config.image_size)) / (
                        len(rows) * config.accumulate)
                    scaler.scale(loss).backward()
                total += float(loss.detach())
                images += len(pixels or ()) * ranks.world
        if images or ranks.distributed:  # (not when every tuple of the step was unreadable)
            scaler.step(optimizer)
            scaler.update()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        step += 1
        elapsed = time.perf_counter() - t0 - mining[0]
        row = {"step": step, "epoch": epoch, "loss": runtime.mean_over_ranks(total, ranks, device), "lr": lr,
               "images_per_s": images / max(elapsed, 1e-9), "eval_map": math.nan}
        if config.eval_every and (step % config.eval_every == 0 or step == config.steps):
            row["eval_map"] = evaluate()
            network.train()
            freeze_batchnorm(network)
        history.append(row)
        log.add(row)
        if on_log and ranks.main:
            on_log(row)
        advance(1)
        if config.checkpoint_every and step % config.checkpoint_every == 0 and ranks.main:
            save_state(run, step, snapshot())
            log.write_csv(history)
    log.write_csv(history)
    log.close()
    for lo in loaders:
        lo.close()
    runtime.finish(ranks, started)
    network.eval()
    return TrainResult(network, history, step, with_skipped(problems, skipped))
