"""``glocal index build --global ivfpq``: a global method's approximate index, chosen from the command line."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from glocal.cli.main import app

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _images(folder: Path, n: int) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        base = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)  # blocky random patterns, all different
        img = Image.fromarray(base).resize((48, 48), Image.NEAREST)
        paths.append(folder / f"im{i:03d}.png")
        img.save(paths[-1])
    return paths


def test_build_with_ivfpq_and_search(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    paths = _images(tmp_path / "photos", 260)
    runner = CliRunner()
    env = {"GLOCAL_PROGRESS": "0"}
    args = ["index", "build", str(tmp_path / "photos"), "--method", "dolg", "--global", "ivfpq",
            "--set", "max_side=48", "--set", "scales=[1.0]", "--out", str(tmp_path / "pq.glx")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        res = runner.invoke(app, args, env=env)
        assert res.exit_code == 0, res.output
        info = json.loads(runner.invoke(app, ["index", "info", str(tmp_path / "pq.glx"), "--json"], env=env).output)
        assert info["images"] == 260 and info["shortlist"]["kind"] == "ivfpq"
        assert info["shortlist"]["code_bytes"] < 512 * 4  # product-quantised, not float vectors
        res = runner.invoke(app, ["search", str(tmp_path / "pq.glx"), str(paths[7]), "--json", "--top", "10"],
                            env=env)
    assert res.exit_code == 0, res.output
    assert paths[7].name in [h["name"] for h in json.loads(res.stdout)["results"]]


def test_ivfpq_on_a_small_collection_is_refused_in_one_line(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    _images(tmp_path / "few", 12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = CliRunner().invoke(app, ["index", "build", str(tmp_path / "few"), "--method", "dolg", "--global",
                                       "ivfpq", "--set", "max_side=48", "--set", "scales=[1.0]", "--out",
                                       str(tmp_path / "x.glx")], env={"GLOCAL_PROGRESS": "0"})
    assert res.exit_code == 2 and "use index=exact" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x.glx").exists()


def test_ivfpq_refusal_comes_before_any_extraction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Too few images for IVF-PQ is said at once: no extractor is built, no image read."""
    from glocal.errors import BadOptionError
    from glocal.index import builder

    def no_extraction(*_args, **_kwargs):
        raise AssertionError("extractors built before the size check")

    monkeypatch.setattr(builder, "create_extractors", no_extraction)
    paths = _images(tmp_path / "few", 3)
    with pytest.raises(BadOptionError, match="at least 256 images"):
        builder.build_index(paths, [p.name for p in paths], tmp_path / "x.glx", method="dolg",
                            settings={"index": "ivfpq"}, progress=False)
    assert not (tmp_path / "x.glx").exists()
