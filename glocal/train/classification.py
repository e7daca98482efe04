"""The ``classification`` regime of ``glocal train`` (DELG, DOLG, ViTGaL): a margin classifier over the
training classes on the method's global embedding, and for DELG and ViTGaL the local branch's losses.

Losses per step (:class:`ClassificationTask`):

* global: ArcFace or CosFace (:mod:`glocal.train.margins`) on DELG's whitened GeM vector (DELG eq. 2), on
  DOLG's fused 512-D embedding before normalisation (DOLG eq. 6-7), on ViTGaL's CLS token (ViTGaL eq. 1-2);
  margin and scale default to the model's (DELG m = 0.1, s = 45.25; DOLG m = 0.15, s = 30; ViTGaL m = 0.1,
  s = 30; CosFace m = 0.35);
* DELG: ``L = w_g L_g + lambda L_r + beta L_a`` (lambda = 10, beta = 1), the attention and reconstruction
  losses of :mod:`glocal.train.delg_losses` on the gradient-stopped res4 map. ``global_weight = 0`` leaves
  the global head out (the local heads alone train; the backbone gets no gradient at all).
* ViTGaL: ``L = w_g L_g + beta L_c + lambda L_r`` (ViTGaL eq. 3-4: L_c the cross-entropy of the autoencoder's
  class-attention token, logged as ``attention_loss``; lambda = 10), the autoencoder losses of
  :mod:`glocal.train.vitgal_losses` on the gradient-stopped patch tokens; ``global_weight = 0`` is the paper's
  autoencoder stage after the global training (the ViTGaL network frozen, run without gradients).

``freeze_backbone``: the backbone's parameters do not train and it runs in eval mode (the heads train on its
features; a CNN backbone's maps are computed per image and kept, up to ``cache_images`` of them, as images are
not augmented). Every batch norm keeps its running statistics (eval mode; small batches), as in the tuples regime.

Images: read per batch (:mod:`glocal.train.batches`: header check up front, ``workers`` decoding threads, at
most ``cache_images`` kept, a file found unreadable reported once and left out of its batch) with the longest
side ``image_size``, resized to ``image_size`` x ``image_size``
(DOLG trains at 512 x 512), batched; no augmentation. Only images with a class train (distractors do not);
classes are renumbered over the training split. Adam (default, lr 1e-4: stable at the small batches of a CPU or
one GPU, chosen on synthetic shapes) or SGD with momentum 0.9 (the papers': DELG and DOLG train with SGD at
batch 128 over 8 GPUs); the learning rate multiplied by ``lr_gamma`` after each step; gradients clipped to
norm ``clip_norm`` (0: no clipping; DELG's TF release clips at 10).

Seeded and resumable like :mod:`glocal.train.loop`: one ``torch.Generator`` orders every epoch; a checkpoint
every ``checkpoint_every`` steps (``RUN/checkpoints/step-NNNNNNN.pt``) holds the task (network + heads),
optimizer, scheduler, scaler, random states, the epoch's order and position and the log, so a resumed run
reaches bit-identical weights. ``RUN/log.csv``: one row per step. ``amp`` and ``channels_last`` as in the tuples
regime (:func:`glocal.train.runtime.resolve_precision`: opt-in, CUDA only, a note when ignored on the CPU).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glocal.errors import BadInputError, BadOptionError
from glocal.models.backbones.catalog import STRIDE16, STRIDE32
from glocal.models.delg import Delg
from glocal.models.dolg import Dolg
from glocal.models.vitgal import Vitgal
from glocal.progress import Progress, no_progress
from glocal.train import runtime
from glocal.train.batches import (
    ImageLoader,
    SquareBatches,
    readable,
    with_skipped,
)
from glocal.train.checkpointing import latest_state, optimisation_state, restore_optimisation, save_state
from glocal.train.data import TrainingSet
from glocal.train.delg_losses import ATTENTION_WEIGHT, RECONSTRUCTION_WEIGHT, delg_local_losses
from glocal.train.loop import TrainResult, freeze_batchnorm
from glocal.train.margins import MARGIN_LOSSES, MarginHead
from glocal.train.tuples import mean_average_precision
from glocal.train.vitgal_losses import vitgal_local_losses

STATE_FORMAT = "glocal/train-classification-state/1"
LOG_FIELDS = ("step", "epoch", "loss", "global_loss", "attention_loss", "reconstruction_loss", "accuracy",
              "lr", "images_per_s", "eval_map")
COSFACE_MARGIN = 0.35


@dataclass(frozen=True)
class ClassifyConfig(runtime.RunOptions):
    """Settings of :func:`train_classification` (module docstring). ``margin`` / ``scale`` None: the model's."""

    steps: int = 100
    batch: int = 16
    accumulate: int = 1
    lr: float = 1e-4
    optimizer: str = "adam"
    weight_decay: float = 1e-4
    lr_gamma: float = 1.0
    clip_norm: float = 10.0
    loss: str = "arcface"
    margin: float | None = None
    scale: float | None = None
    learn_scale: bool = False
    freeze_backbone: bool = False
    global_weight: float = 1.0
    attention_weight: float = ATTENTION_WEIGHT
    reconstruction_weight: float = RECONSTRUCTION_WEIGHT
    image_size: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        runtime.check_counts(self, ("steps", "batch", "accumulate", "image_size"), ())
        if self.loss not in MARGIN_LOSSES:
            raise BadOptionError(f"--loss must be one of {', '.join(MARGIN_LOSSES)}, got {self.loss!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise BadOptionError(f"--optimizer must be sgd or adam, got {self.optimizer!r}")
        if not self.lr > 0 or not self.lr_gamma > 0 or (self.scale is not None and not self.scale > 0):
            raise BadOptionError("--lr, lr_gamma and --scale must be > 0")
        weights = (self.global_weight, self.attention_weight, self.reconstruction_weight, self.margin or 0.0)
        if min(weights) < 0 or self.clip_norm < 0 or self.weight_decay < 0:
            raise BadOptionError("loss weights, --margin, clip_norm and weight_decay must be >= 0")


class ClassificationTask(nn.Module):
    """A DELG / DOLG / ViTGaL network with its training heads: the margin classifier on the global
    embedding and, for DELG and ViTGaL, the classifier of the local branch (DELG: of the attention-pooled
    reconstruction; ViTGaL: of the autoencoder's class-attention CLS token) (module docstring)."""

    def __init__(self, model: nn.Module, num_classes: int, config: ClassifyConfig) -> None:
        super().__init__()
        if not isinstance(model, Delg | Dolg | Vitgal):
            raise BadOptionError(f"the classification regime cannot train a {type(model).__name__} network")
        self.model, self.config = model, config
        if isinstance(model, Delg):
            dim = model.global_dim
        elif isinstance(model, Dolg):
            dim = model.config.output_dim
        else:
            dim = model.norm.normalized_shape[0]
        margin = config.margin if config.margin is not None else (
            model.config.arcface_margin if config.loss == "arcface" else COSFACE_MARGIN)
        scale = config.scale if config.scale is not None else model.config.arcface_scale
        self.head = MarginHead(dim, num_classes, config.loss, margin, scale, config.learn_scale)
        local_dim = (model.autoencoder.encoder.in_channels if isinstance(model, Delg) else
                     model.autoencoder.decoder.out_features if isinstance(model, Vitgal) else 0)
        self.attention_classifier = nn.Linear(local_dim, num_classes) if local_dim else None
        if config.freeze_backbone:
            for p in model.backbone.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> ClassificationTask:
        """Training mode except the batch norms (and the whole backbone when frozen)."""
        super().train(mode)
        if mode:
            freeze_batchnorm(self)
            if self.config.freeze_backbone:
                self.model.backbone.eval()
        return self

    @property
    def caches_maps(self) -> bool:
        """A frozen CNN backbone's maps can be computed once per image (DELG, DOLG; not ViTGaL's trunk)."""
        return self.config.freeze_backbone and not isinstance(self.model, Vitgal)

    def maps(self, x: Tensor) -> dict[str, Tensor]:
        """The backbone's maps the losses need (DELG, DOLG): res4, and res5 unless ``global_weight`` is 0."""
        stages = (STRIDE16, STRIDE32) if self.config.global_weight > 0 else (STRIDE16,)
        return self.model.backbone(x, stages)

    def losses(self, x: Tensor | None, labels: Tensor, maps: dict[str, Tensor] | None = None
               ) -> dict[str, Tensor | float]:
        """``total`` and its parts of a batch (B, 3, S, S) with class labels (B,); ``maps``: the backbone's
        (:meth:`maps`) when already computed (``x`` is then not used)."""
        m, cfg = self.model, self.config
        out: dict[str, Tensor | float] = {"accuracy": math.nan}
        emb = tokens = None
        if isinstance(m, Vitgal):  # global_weight 0: the paper's autoencoder stage, the network frozen
            with torch.no_grad() if cfg.global_weight == 0 else contextlib.nullcontext():
                feats = m.features(x)
            emb, tokens = (feats.cls if cfg.global_weight > 0 else None), feats.local
        else:
            maps = self.maps(x) if maps is None else maps
            if cfg.global_weight > 0:
                emb = m.global_prelogits(maps[STRIDE32]) if isinstance(m, Delg) else \
                    m.fusion_parts_from_features(maps)["embedding"]
        zero = (emb if emb is not None else tokens if tokens is not None else maps[STRIDE16]).new_zeros(())
        out.update({"global": zero, "attention": zero, "reconstruction": zero})
        total = zero
        if cfg.global_weight > 0 and emb is not None:
            emb = emb.float()
            out["global"] = self.head.loss(emb, labels)
            out["accuracy"] = self.head.accuracy(emb.detach(), labels)
            total = total + cfg.global_weight * out["global"]
        if self.attention_classifier is not None:
            local = (delg_local_losses(m, maps[STRIDE16].float(), labels, self.attention_classifier)
                     if isinstance(m, Delg) else vitgal_local_losses(m, tokens.float(), labels, self.attention_classifier))
            out["attention"], out["reconstruction"] = local.attention, local.reconstruction
            if cfg.global_weight == 0:
                out["accuracy"] = local.accuracy
            total = total + cfg.attention_weight * local.attention + cfg.reconstruction_weight * local.reconstruction
        out["total"] = total
        return out

    @torch.no_grad()
    def describe(self, x: Tensor) -> Tensor:
        """(B, D) L2-normalised global descriptors (inference path of the network)."""
        out = self.model(x) if isinstance(self.model, Dolg) else self.model(x, with_local=False).global_descriptor
        return F.normalize(out.float(), dim=1)


def _describe_all(task: ClassificationTask, batches: SquareBatches, n: int) -> Tensor:
    """Global descriptors of images 0..n-1 of ``batches`` (an unreadable image's: a zero row)."""
    rows: list[Tensor | None] = [task.describe(batches.tensor([i])) if p is not None else None
                                 for i, p in batches.loader.stream(range(n))]
    dim = next((r.shape[1] for r in rows if r is not None), 1)
    return torch.cat([r if r is not None else torch.zeros(1, dim, device=batches.device) for r in rows])


def _optimizer(task: ClassificationTask, config: ClassifyConfig) -> torch.optim.Optimizer:
    params = [p for p in task.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)


def train_classification(network: nn.Module, preprocessing: str, train: TrainingSet, held_out: TrainingSet | None,
                         config: ClassifyConfig, run: str | Path, resume: bool = False,
                         progress: Progress = no_progress,
                         on_log: Callable[[dict[str, float]], None] | None = None,
                         say: Callable[[str], None] | None = None) -> TrainResult:
    """Train ``network`` (a DELG / DOLG / ViTGaL model, in place) on the classes of ``train`` (module
    docstring); ``held_out``: classes for the evaluation hook (global mAP); ``run``: the run folder; ``say``:
    where one-line notes go (options ignored on this device, files found unreadable), default stderr."""
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    say = say or runtime._stderr
    device = torch.device(config.device)
    precision = runtime.resolve_precision(config.amp, config.channels_last, device)
    for note in precision.notes:
        say(note)
    train = readable(train, config.workers)
    problems = list(train.problems)
    if held_out is not None and len(held_out.anchors()):
        held_out = readable(held_out, config.workers)
        problems += [p for p in held_out.problems if p not in problems]
    else:
        held_out = None
    labelled = np.flatnonzero(train.labels >= 0)
    classes = np.unique(train.labels[labelled])
    if len(classes) < 2:
        raise BadInputError(f"{train.source}: a classifier needs two training classes with readable images, "
                            f"found {len(classes)} (--eval-fraction holds whole classes out; try --eval-fraction 0)")
    number = {int(c): k for k, c in enumerate(classes)}

    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):  # the heads' initialisation, seeded and apart from the run's RNG
        torch.manual_seed(config.seed)
        task = ClassificationTask(network, len(classes), config)
    task.to(device)
    if precision.channels_last:
        task.to(memory_format=torch.channels_last)
    optimizer = _optimizer(task, config)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_gamma)
    scaler = torch.amp.GradScaler("cuda", enabled=precision.scaler_enabled)
    skipped: dict[str, str] = {}  # files found unreadable during the run (batches.ImageLoader)
    loaders = [ImageLoader(d.files, config.image_size, config.cache_images, config.workers, say, skipped)
               for d in (train, held_out) if d is not None]
    batches, eval_batches = (SquareBatches(lo, preprocessing, config.image_size, device, precision.channels_last)
                             for lo in (loaders[0], loaders[-1]))
    step, epoch, position = 0, 0, 0
    order = np.zeros(0, dtype=np.int64)
    history: list[dict[str, float]] = []
    csv_log = runtime.RunLog(run, LOG_FIELDS, tensorboard=False)  # log.csv, as the tuples regime writes it

    if resume:
        state = latest_state(run, STATE_FORMAT, "glocal classification training state")
        task.load_state_dict(state["task"])
        step, epoch, position = restore_optimisation(state, optimizer, scheduler, scaler, generator, device)
        order = state["order"].numpy().copy()
        history = [dict(r) for r in state["history"]]
        skipped.update(state.get("skipped", {}))

    def evaluate() -> float:
        if held_out is None:
            return math.nan
        task.eval()
        with precision.context(device):
            desc = _describe_all(task, eval_batches, len(held_out))
        return mean_average_precision(desc, held_out)

    def frozen_maps(x: Tensor) -> dict[str, Tensor]:  # the frozen backbone in eval mode, no gradient
        was = task.training
        task.model.backbone.eval()
        with torch.no_grad():
            out = task.maps(x)
        task.train(was)
        return out

    def snapshot() -> dict:
        return {"format": STATE_FORMAT, "step": step, "epoch": epoch, "position": position,
                "order": torch.from_numpy(order), "task": task.state_dict(),
                **optimisation_state(optimizer, scheduler, scaler, generator, device),
                "history": history, "skipped": dict(skipped), "config": dataclasses.asdict(config)}

    def log(row: dict[str, float]) -> None:
        history.append(row)
        if on_log:
            on_log(row)

    if step == 0 and config.eval_every and held_out is not None:
        log({"step": 0, "epoch": 0, "loss": math.nan, "lr": config.lr, "images_per_s": math.nan,
             "eval_map": evaluate()})

    def next_batch() -> list[int]:
        nonlocal order, position, epoch
        if position >= len(order):
            epoch += 1
            order = labelled[torch.randperm(len(labelled), generator=generator).numpy()]
            position = 0
        rows = order[position:position + config.batch]
        position += len(rows)
        batches.loader.prefetch(order[position:position + config.batch])  # decoded while this batch trains
        return [int(i) for i in rows]

    def next_readable_batch() -> list[int]:
        """The next batch without its unreadable images (a batch with none readable is passed over)."""
        for _ in range(len(labelled) + 1):
            ids = batches.take(next_batch(), with_cached_maps=task.caches_maps)
            if ids:
                return ids
        raise BadInputError(f"{train.source}: none of the training images can be read")

    params = [p for p in task.parameters() if p.requires_grad]
    advance = progress("training", config.steps - step)
    while step < config.steps:
        task.train()
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        sums = {"total": 0.0, "global": 0.0, "attention": 0.0, "reconstruction": 0.0}
        accuracy, images = [], 0
        for _ in range(config.accumulate):
            ids = next_readable_batch()
            labels = torch.tensor([number[int(train.labels[i])] for i in ids], device=device)
            maps = batches.maps(ids, frozen_maps) if task.caches_maps else None
            x = batches.tensor(ids) if maps is None else None
            with precision.context(device):
                parts = task.losses(x, labels, maps)
            scaler.scale(parts["total"] / config.accumulate).backward()
            for k in sums:
                sums[k] += float(torch.as_tensor(parts[k]).detach()) / config.accumulate
            accuracy.append(float(parts["accuracy"]))
            images += len(ids)
        if config.clip_norm > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], config.clip_norm)
        scaler.step(optimizer)
        scaler.update()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        step += 1
        row = {"step": step, "epoch": epoch, "loss": sums["total"], "global_loss": sums["global"],
               "attention_loss": sums["attention"], "reconstruction_loss": sums["reconstruction"],
               "accuracy": float(np.mean(accuracy)), "lr": lr,
               "images_per_s": images / max(time.perf_counter() - t0, 1e-9), "eval_map": math.nan}
        if config.eval_every and (step % config.eval_every == 0 or step == config.steps):
            row["eval_map"] = evaluate()
        log(row)
        advance(1)
        if config.checkpoint_every and step % config.checkpoint_every == 0:
            save_state(run, step, snapshot())
            csv_log.write_csv(history)
    csv_log.write_csv(history)
    for lo in loaders:
        lo.close()
    task.eval()
    return TrainResult(network, history, step, with_skipped(problems, skipped))
