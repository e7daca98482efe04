"""Where a training run runs and what it writes besides checkpoints: one process or several under ``torchrun``
(DistributedDataParallel), mixed precision and channels_last on CUDA, and the logs (CSV always, TensorBoard
event files when the ``tensorboard`` package is installed).

Several processes: ``torchrun --nproc_per_node K -m glocal train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`start` then joins the process group (``gloo`` on
the CPU, ``nccl`` on CUDA, where rank ``r`` uses ``cuda:LOCAL_RANK``). Rank 0 mines the tuples and sends them
to every rank (:func:`broadcast`); each rank trains on its share of them, every ``world``-th tuple starting at
its rank after padding the list by repetition to a multiple of ``world`` (:func:`shard`, as torch's
``DistributedSampler``), so a step covers ``world x batch`` tuples and the gradients are averaged over the ranks
by DDP. Only rank 0 evaluates, writes checkpoints, logs, ``run.json`` and the exported model.
"""
from __future__ import annotations

import csv
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from glocal.errors import BadOptionError
from glocal.train.batches import DEFAULT_CACHE_IMAGES, DEFAULT_WORKERS

AMP_CHOICES = ("none", "bf16", "fp16")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def ranks_from_environment(env: dict[str, str] | None = None) -> Ranks:
    """``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` as torchrun sets them (absent: one process)."""
    env = dict(os.environ) if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise BadOptionError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise BadOptionError(f"RANK {rank} is outside 0..WORLD_SIZE-1 (WORLD_SIZE {world})")
    return Ranks(rank, world, local)


def start(device: str) -> tuple[Ranks, torch.device, bool]:
    """This process's ranks and device; joins the process group when there are several processes (returns
    whether it started it, so that :func:`finish` leaves a caller's group alone)."""
    ranks = ranks_from_environment()
    dev = torch.device(device)
    if not ranks.distributed:
        return ranks, dev, False
    import torch.distributed as dist

    if dev.type == "cuda":
        dev = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(dev)
    if dist.is_initialized():
        return ranks, dev, False
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=ranks.rank, world_size=ranks.world)
    return ranks, dev, True


def finish(ranks: Ranks, started: bool) -> None:
    """Wait for every rank, then leave the process group if :func:`start` joined it."""
    if ranks.distributed:
        import torch.distributed as dist

        dist.barrier()
        if started:
            dist.destroy_process_group()


def broadcast(value: Any, ranks: Ranks) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not ranks.distributed:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_ranks(value: float, ranks: Ranks, device: torch.device | None = None) -> float:
    """The mean of ``value`` over the ranks (for the log: the loss of the whole step)."""
    if not ranks.distributed:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)  # nccl reduces CUDA tensors only
    dist.all_reduce(t)
    return float(t[0]) / ranks.world


def shard(rows: np.ndarray, ranks: Ranks) -> np.ndarray:
    """This rank's share of ``rows``: padded by repetition to a multiple of ``world``, every ``world``-th row
    from ``rank`` (all ranks get the same number of rows)."""
    if not ranks.distributed or len(rows) == 0:
        return rows
    total = -(-len(rows) // ranks.world) * ranks.world
    padded = rows[np.arange(total) % len(rows)]
    return padded[ranks.rank::ranks.world]


class TupleNet(nn.Module):
    """A list of images (each (1, 3, H, W), its own size) -> their stacked descriptors (n, D) in one forward
    call, so that DDP sees one forward and one backward per tuple. With ``outputs`` (``(network, image) ->
    anything``, :class:`glocal.train.objectives.TupleObjective`): the list of every image's outputs instead."""

    def __init__(self, network: nn.Module, outputs: Callable[[nn.Module, Tensor], Any] | None = None) -> None:
        super().__init__()
        self.network = network
        self.outputs = outputs

    def forward(self, images: Sequence[Tensor]) -> Any:  # type: ignore[override]
        if self.outputs is not None:
            return [self.outputs(self.network, x) for x in images]
        return torch.cat([self.network(x) for x in images])


def wrap(network: nn.Module, ranks: Ranks, device: torch.device,
         outputs: Callable[[nn.Module, Tensor], Any] | None = None) -> nn.Module:
    """The module the training steps call: :class:`TupleNet`, inside DDP when distributed."""
    tuple_net = TupleNet(network, outputs)
    if not ranks.distributed:
        return tuple_net
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(tuple_net, device_ids=ids)


def no_sync(module: nn.Module, last: bool) -> AbstractContextManager:
    """DDP's ``no_sync`` for every backward of a step but the last (gradients all-reduced once per step)."""
    if last or not hasattr(module, "no_sync"):
        return nullcontext()
    return module.no_sync()


@dataclass(frozen=True)
class Precision:
    """What the CUDA-only options resolve to on ``device``: the autocast dtype (None: float32) and the memory
    format; ``notes`` say what was ignored."""

    autocast: torch.dtype | None
    channels_last: bool
    notes: tuple[str, ...] = ()

    @property
    def scaler_enabled(self) -> bool:
        return self.autocast == torch.float16

    def context(self, device: torch.device) -> AbstractContextManager:
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=self.autocast)


@dataclass(frozen=True)
class RunOptions:
    """The settings every regime's config shares (each regime's config extends it): checkpoints and
    evaluation every N steps (0: never), the seed, the device, the precision (:func:`resolve_precision`) and
    image loading (:class:`glocal.train.batches.ImageLoader`: decoding threads, decoded images kept)."""

    checkpoint_every: int = 0
    eval_every: int = 0
    seed: int = 0
    device: str = "cpu"
    amp: str = "none"
    channels_last: bool = False
    workers: int = DEFAULT_WORKERS
    cache_images: int = DEFAULT_CACHE_IMAGES

    def __post_init__(self) -> None:
        check_counts(self, (), ("checkpoint_every", "eval_every", "workers", "cache_images"))

    @classmethod
    def from_settings(cls, train: Mapping[str, Any], regime: str) -> Any:
        """The config of ``regime`` from ``train`` (CLI names with underscores); a name that is not one of its
        settings (e.g. the tuples regime's ``negatives`` given to another regime) is a :class:`BadOptionError`."""
        unknown = sorted(set(train) - {f.name for f in fields(cls)})
        if unknown:
            raise BadOptionError(f"{', '.join('--' + k.replace('_', '-') for k in unknown)}: not a setting of the "
                                 f"{regime} regime")
        return cls(**train)


def check_probability(config: Any, name: str) -> None:
    """``config.<name>`` in [0, 1], else one :class:`BadOptionError` line naming the option as the CLI spells it."""
    value = getattr(config, name)
    if not 0.0 <= value <= 1.0:
        raise BadOptionError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")


def check_counts(config: Any, at_least_one: Sequence[str], non_negative: Sequence[str]) -> None:
    """The settings checks every regime's config shares: ``amp`` among :data:`AMP_CHOICES`, the named counts
    >= 1 and >= 0; a failure is one :class:`BadOptionError` line naming the option as the CLI spells it."""
    if config.amp not in AMP_CHOICES:
        raise BadOptionError(f"--amp must be one of {', '.join(AMP_CHOICES)}, got {config.amp!r}")
    for names, low in ((at_least_one, 1), (non_negative, 0)):
        for name in names:
            if getattr(config, name) < low:
                raise BadOptionError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(config, name)}")


def resolve_precision(amp: str, channels_last: bool, device: torch.device) -> Precision:
    """``--amp none|bf16|fp16`` and ``--channels-last``: applied on CUDA; on any other device accepted and
    ignored, with a note saying so."""
    if amp not in AMP_CHOICES:
        raise BadOptionError(f"--amp must be one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    if device.type == "cuda":
        return Precision({"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp], channels_last)
    asked = [f"--amp {amp}"] if amp != "none" else []
    asked += ["--channels-last"] if channels_last else []
    verb = "apply" if len(asked) > 1 else "applies"
    notes = (f"{' and '.join(asked)} {verb} on CUDA only; ignored on {device.type} (float32, contiguous)",) \
        if asked else ()
    return Precision(None, False, notes)


class RunLog:
    """``RUN/log.csv`` (every row so far, rewritten atomically) and, when ``tensorboard`` is installed, event
    files in ``RUN/tensorboard/`` (one scalar per numeric field and step). Writes nothing unless ``enabled``
    (rank 0)."""

    def __init__(self, run: Path, fields: Sequence[str], enabled: bool = True,
                 say: Callable[[str], None] | None = None, tensorboard: bool = True) -> None:
        self.run, self.fields, self.enabled = run, tuple(fields), enabled
        self.writer: Any = None
        if not enabled or not tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            (say or _stderr)("tensorboard is not installed: logging to log.csv only (pip install tensorboard)")
            return
        self.writer = SummaryWriter(log_dir=str(run / "tensorboard"))

    def add(self, row: dict[str, float]) -> None:
        if self.writer is None:
            return
        step = int(row["step"])
        for key in self.fields:
            value = row.get(key)
            if key != "step" and isinstance(value, int | float) and not math.isnan(value):
                self.writer.add_scalar(f"train/{key}", float(value), global_step=step)
        self.writer.flush()

    def write_csv(self, history: list[dict[str, float]]) -> None:
        if not self.enabled:
            return
        tmp = self.run / "log.csv.tmp"
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=self.fields)
            w.writeheader()
            for row in history:
                w.writerow({k: row.get(k, "") for k in self.fields})
        os.replace(tmp, self.run / "log.csv")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)
