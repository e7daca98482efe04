"""The demo benchmark: reproducible from its seed, a ground truth that means what it says, and the demo run."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from glocal.demo.synthetic import LANDMARKS, TRANSFORMS, make_benchmark, oblique, transform


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "jpg").glob("*.jpg"))}


def test_same_seed_same_files_other_seed_other_files(demo_benchmark, tmp_path: Path) -> None:
    again = make_benchmark(tmp_path / "again", seed=0)
    assert again.db_names == demo_benchmark.db_names and again.gnd == demo_benchmark.gnd
    assert _files(again.root) == _files(demo_benchmark.root)
    other = make_benchmark(tmp_path / "other", seed=1)
    assert sorted(other.db_names) == sorted(again.db_names)  # the same images, in another order
    assert _files(other.root)["astronaut_oblique.jpg"] != _files(again.root)["astronaut_oblique.jpg"]


def test_ground_truth_follows_the_transforms(demo_benchmark) -> None:
    b = demo_benchmark
    with open(b.root / "gnd_demo.pkl", "rb") as f:
        stored = pickle.load(f)
    assert stored["imlist"] == b.db_names and stored["qimlist"] == b.query_names
    assert len(b.query_names) == len(LANDMARKS)
    for lm, g in zip(LANDMARKS, b.gnd):
        named = {kind: [b.db_names[i] for i in g[kind]] for kind in ("easy", "hard", "junk")}
        for kind, names in named.items():
            assert all(n.startswith(f"{lm}_") for n in names), (lm, kind, names)
        expected = {kind: sorted(t for t, d in TRANSFORMS.items() if d == kind) for kind in ("easy", "hard", "junk")}
        if lm == "motorcycle":
            expected["hard"] = sorted([*expected["hard"], "second_view"])
        assert {k: sorted(n.removeprefix(f"{lm}_") for n in v) for k, v in named.items()} == expected
    # look-alikes and mirror images are negatives of every query
    negatives = [i for i, n in enumerate(b.db_names) if n.startswith(("lookalike_", "mirror_"))]
    assert len(negatives) >= len(LANDMARKS)
    assert not set(negatives) & {i for g in b.gnd for k in ("easy", "hard", "junk") for i in g[k]}


def test_oblique_view_foreshortens_one_side() -> None:
    """A plane turned 60 degrees about its vertical axis: the far edge comes out shorter than the near one."""
    H = oblique((400, 300), 60.0, axis="y")
    corners = np.array([[0, 0, 1], [400, 0, 1], [400, 300, 1], [0, 300, 1]], float) @ H.T
    xy = corners[:, :2] / corners[:, 2:]
    left, right = xy[3, 1] - xy[0, 1], xy[2, 1] - xy[1, 1]
    assert min(left, right) / max(left, right) < 0.75
    assert xy[:, 0].min() >= 0 and xy[:, 0].max() <= 400 and xy[:, 1].max() <= 300


def test_unknown_transform_is_refused() -> None:
    rng = np.random.default_rng(0)
    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown transform"):
        transform(img, "teleport", rng, img)
