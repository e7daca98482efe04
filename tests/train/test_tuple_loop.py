"""The tuples training loop on a tiny network: the loss falls, an interrupted run resumed from its checkpoint
ends bit-identical to an uninterrupted one, unreadable images are counted, the CSV log is written."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from glocal.train.checkpointing import checkpoints  # noqa: E402
from glocal.train.data import read_training_set, split_classes  # noqa: E402
from glocal.train.loop import TrainConfig, train_tuples  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")


class Tiny(nn.Module):
    """Two convolutions and mean pooling: (1, 3, H, W) -> (1, 16)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, stride=2), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))


CONFIG = TrainConfig(steps=30, batch=4, lr=3e-3, negatives=2, margin=0.7, image_size=48, seed=3)


def test_loss_falls_and_held_out_map_is_logged(shapes: Path, tmp_path: Path) -> None:
    ts = read_training_set(shapes)
    train, held = split_classes(ts, 0.25, seed=0)
    cfg = TrainConfig(**{**CONFIG.__dict__, "eval_every": 10})
    result = train_tuples(Tiny(), "imagenet", train, held, cfg, tmp_path / "run")
    losses = [r["loss"] for r in result.history if r["step"] > 0]
    assert len(losses) == 30
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.3 * first, (first, last)  # measured: 0.08 -> 0.001 over three data seeds
    assert [s for s, _ in result.evaluations()] == [0, 10, 20, 30]
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert len(rows) == 31 and rows[-1]["step"] == "30" and float(rows[-1]["images_per_s"]) > 0


class Stop(Exception):
    pass


def test_resume_is_bit_identical(shapes: Path, tmp_path: Path) -> None:
    ts = read_training_set(shapes)
    cfg = TrainConfig(**{**CONFIG.__dict__, "steps": 7, "checkpoint_every": 3, "batch": 3})
    whole = train_tuples(Tiny(), "imagenet", ts, None, cfg, tmp_path / "whole").network

    def crash(row: dict) -> None:
        if row["step"] == 5:
            raise Stop

    with pytest.raises(Stop):
        train_tuples(Tiny(), "imagenet", ts, None, cfg, tmp_path / "cut", on_log=crash)
    assert [p.name for p in checkpoints(tmp_path / "cut")] == ["step-0000003.pt"]
    resumed = train_tuples(Tiny(), "imagenet", ts, None, cfg, tmp_path / "cut", resume=True)
    assert resumed.step == 7 and [int(r["step"]) for r in resumed.history] == list(range(1, 8))
    for (name, a), b in zip(whole.state_dict().items(), resumed.network.state_dict().values()):
        assert torch.equal(a, b), name
    # and the run actually moved the weights
    assert not all(torch.equal(a, b) for a, b in zip(Tiny().state_dict().values(), whole.state_dict().values()))


def test_unreadable_images_are_counted_not_fatal(shapes: Path, tmp_path: Path) -> None:
    (shapes / "class0" / "broken.png").write_bytes(b"not a png")
    ts = read_training_set(shapes)
    cfg = TrainConfig(**{**CONFIG.__dict__, "steps": 1})
    result = train_tuples(Tiny(), "imagenet", ts, None, cfg, tmp_path / "run")
    assert [Path(p).name for p, _ in result.problems] == ["broken.png"]


def test_flip_tuple_mirrors_with_its_probability_and_repeats_its_draws() -> None:
    from glocal.train.loop import flip_tuple

    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    tup = [img, img + 1, img + 2]
    assert flip_tuple(tup, 0.0, 0, 1, 0, 5) is tup
    every = flip_tuple(tup, 1.0, 0, 1, 0, 5)
    assert all(np.array_equal(f, t[:, ::-1]) for f, t in zip(every, tup))
    flips = [[not np.array_equal(f, t) for f, t in zip(flip_tuple(tup, 0.5, 0, 1, 0, row), tup)] for row in range(200)]
    rate = np.mean(flips)
    assert 0.4 < rate < 0.6  # 600 draws of p = 0.5
    again = [[not np.array_equal(f, t) for f, t in zip(flip_tuple(tup, 0.5, 0, 1, 0, row), tup)] for row in range(200)]
    assert again == flips  # the same (seed, epoch, rank, row): the same flips (exact resume)
    other_epoch = [[not np.array_equal(f, t) for f, t in zip(flip_tuple(tup, 0.5, 0, 2, 0, row), tup)] for row in range(200)]
    assert other_epoch != flips


def test_flipping_changes_training_and_resumes_bit_identical(shapes: Path, tmp_path: Path) -> None:
    ts = read_training_set(shapes)
    base = {**CONFIG.__dict__, "steps": 5, "checkpoint_every": 2, "batch": 3}
    plain = train_tuples(Tiny(), "imagenet", ts, None, TrainConfig(**base), tmp_path / "plain").network
    cfg = TrainConfig(**{**base, "flip_prob": 0.5})
    whole = train_tuples(Tiny(), "imagenet", ts, None, cfg, tmp_path / "whole").network
    assert not all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), whole.state_dict().values()))

    def crash(row: dict) -> None:
        if row["step"] == 3:
            raise Stop

    with pytest.raises(Stop):
        train_tuples(Tiny(), "imagenet", ts, None, cfg, tmp_path / "cut", on_log=crash)
    resumed = train_tuples(Tiny(), "imagenet", ts, None, cfg, tmp_path / "cut", resume=True)
    for (name, a), b in zip(whole.state_dict().items(), resumed.network.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(Exception, match="flip-prob"):
        TrainConfig(flip_prob=1.5)
