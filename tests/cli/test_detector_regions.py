"""``--set regions=detector --set detector=WEIGHTS`` (Detect-to-Retrieve) end to end through the CLI: a saved
detector gives database regions; a wrong weights file is one line with exit status 3."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from glocal.cli.main import app
from glocal.index.collection import Collection
from glocal.models.detector import DetectorConfig, LandmarkDetector, save_detector

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random head: any boxes will do for the plumbing
        det = LandmarkDetector(DetectorConfig(input_size=96, head_width=16, head_depth=1, pretrained_backbone=False,
                                              score_threshold=0.0, min_box_size=1.0))
    path = tmp_path_factory.mktemp("det") / "landmarks.pt"
    save_detector(det, path)
    return path


def _build(folder: Path, out: Path, detector: Path):
    return runner.invoke(app, ["index", "build", str(folder), "--out", str(out), "--method", "d2r",
                               "--set", "regions=detector", "--set", f"detector={detector}",
                               "--set", "codebook_size=16"], env={"GLOCAL_PROGRESS": "0"})


def test_d2r_index_with_detector_regions(demo_benchmark, weights: Path, tmp_path: Path) -> None:
    folder = tmp_path / "db"
    folder.mkdir()
    for p in demo_benchmark.db_paths[:4]:
        (folder / p.name).write_bytes(p.read_bytes())
    result = _build(folder, tmp_path / "d2r.glx", weights)
    assert result.exit_code == 0, result.output
    with Collection.open(tmp_path / "d2r.glx") as c:
        regions = [f.regions for f in c.features]
    assert len(regions) == 4
    assert all(r is not None and r.shape[1] == 4 for r in regions) and any(len(r) for r in regions)


@pytest.mark.parametrize(("content", "words"), [
    ({"format": "glocal/detector/1", "config": {}, "state_dict": {"net.rpn.head.conv.weight": torch.zeros(1)}},
     "torchvision-format landmark detector from an older glocal"),
    (None, "landmark detector weights not found"),
])
def test_wrong_detector_file_is_one_line(demo_benchmark, tmp_path: Path, content, words: str) -> None:
    path = tmp_path / "old.pt"
    if content is not None:
        torch.save(content, path)
    folder = demo_benchmark.db_paths[0].parent
    result = _build(folder, tmp_path / "x.glx", path)
    assert result.exit_code == 3, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0] and "old.pt" in lines[0], lines
