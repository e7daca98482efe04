"""The eval command's own logic, with a stand-in engine (the real one is tested with the engine)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from glocal.cli.eval_cmd import eval_command
from glocal.evaluate import compute_map, runner
from glocal.evaluate.runner import hits_to_ranking, name_map, pad_rankings
from glocal.records import SearchHit


def test_name_map_exact_suffix_and_stem() -> None:
    db = ["all_souls_000001", "sub/b.jpg", "c", "x/dup", "y/dup"]
    engine = ["sub/b.jpg", "all_souls_000001.jpg", "jpg/c.png", "dup.jpg", "unknown", "c"]
    assert name_map(engine, db).tolist() == [1, 0, 2, -1, -1, 2]


def test_hits_to_ranking_drops_unknown_and_repeats() -> None:
    mapping = np.array([2, -1, 0, 1])
    hits = [SearchHit(i, f"n{i}", 1.0, 1.0) for i in (3, 1, 0, 2, 0, 9)]
    assert hits_to_ranking(hits, mapping).tolist() == [1, 2, 0]


def test_pad_rankings() -> None:
    arr = pad_rankings([np.array([3, 1]), np.array([], np.int64), np.array([0])])
    assert arr.tolist() == [[3, 1], [-1, -1], [0, -1]]
    assert compute_map(arr, [{"ok": [1]}, {"ok": [0]}, {"ok": [0]}])[1].tolist() == pytest.approx([0.25, 0.0, 1.0])


class FakeIndex:
    """Stores names in reverse order and ranks database images by a fixed score table."""

    built: list[dict] = []

    def __init__(self, names: list[str]) -> None:
        self.names = names

    @classmethod
    def open_or_build(cls, request, ds, folder: Path, progress) -> tuple[FakeIndex, list]:
        if request.index is not None:
            return cls(["a", "zzz-not-in-dataset", "b", "c", "d"]), []
        cls.built.append({"out": folder, "method": request.method, "codebook_images": request.codebook_images,
                          "n": len(ds.db_paths), "codebook_from": request.codebook_from})
        return cls(list(reversed(ds.db_names))), []

    def settings(self) -> dict:
        return {"method": "fake", "max_side": 1024, "codebook": {"size": 16}, "rerank": {"rerank_top": 100},
                "first_stage": {"kind": "asmk*"}}

    def search(self, query_path: Path, box: tuple | None = None, top: int = 100, rerank_top=None, qe=None,
               dba=None) -> list[SearchHit]:
        # query q1 likes a, b; query q2 likes d; everything else after, in name order
        likes = {"q1": ["a", "b"], "q2": ["d"]}[query_path.stem]
        order = sorted(self.names, key=lambda n: (Path(n).stem not in likes, n))
        return [SearchHit(self.names.index(n), n, 1.0, 1.0) for n in order][:top]

    def close(self) -> None:
        pass


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch) -> type[FakeIndex]:
    monkeypatch.setattr(runner, "open_or_build", FakeIndex.open_or_build)
    monkeypatch.setenv("GLOCAL_PROGRESS", "0")
    FakeIndex.built = []
    return FakeIndex


def make_custom(root: Path) -> None:
    for n in ("q1", "q2", "a", "b", "c", "d"):
        Image.new("RGB", (32, 24), (10, 20, 30)).save(root / f"{n}.jpg")
    (root / "groundtruth.json").write_text(json.dumps({
        "database": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"],
        "queries": [{"image": "q1.jpg", "positives": ["a.jpg", "c.jpg"], "bbox": [0, 0, 20, 20]},
                    {"image": "q2.jpg", "positives": ["d.jpg"], "junk": ["a.jpg"]}],
    }))


def test_eval_builds_index_and_writes_outputs(tmp_path: Path, fake_engine: type[FakeIndex]) -> None:
    make_custom(tmp_path)
    eval_command("custom", tmp_path, method="sift", json_out=tmp_path / "out.json", report=tmp_path / "rep", top=3)
    assert fake_engine.built[0]["n"] == 4 and fake_engine.built[0]["method"] == "sift"
    assert fake_engine.built[0]["codebook_from"] is None
    doc = json.loads((tmp_path / "out.json").read_text())
    # q1: ranking a, b, c -> positives at 0 and 2: 19/24 ; q2: d first -> 1
    assert doc["all"]["map"] == pytest.approx(100 * (19 / 24 + 1) / 2)
    s = doc["settings"]
    assert s["method"] == "fake" and s["max_side"] == 1024 and s["crop"] is True
    assert s["rerank_on"] is True and s["top"] == 3 and s["dataset"] == "custom"
    assert s["first_stage"] == {"kind": "asmk*"}  # the index's settings are kept
    assert (tmp_path / "rep" / "index.html").is_file()


def test_eval_with_existing_index_maps_names(tmp_path: Path, fake_engine: type[FakeIndex]) -> None:
    make_custom(tmp_path)
    eval_command("custom", tmp_path, index=tmp_path / "some.glx", no_crop=True, json_out=tmp_path / "o.json")
    assert fake_engine.built == []
    doc = json.loads((tmp_path / "o.json").read_text())
    assert doc["settings"]["crop"] is False and doc["settings"]["index_path"].endswith("some.glx")
    assert doc["all"]["map"] == pytest.approx(100 * (19 / 24 + 1) / 2)


def test_eval_through_typer(tmp_path: Path, fake_engine: type[FakeIndex]) -> None:
    make_custom(tmp_path)
    app = typer.Typer()
    app.command("eval")(eval_command)
    app.command("other")(lambda: None)
    result = CliRunner().invoke(app, ["eval", "custom", "--data", str(tmp_path), "--json", str(tmp_path / "t.json"),
                                      "--top", "2", "--method", "sift", "--codebook-from", str(tmp_path / "cb.glx")])
    assert result.exit_code == 0, result.output
    assert "all" in result.output and json.loads((tmp_path / "t.json").read_text())["settings"]["top"] == 2
    assert fake_engine.built[-1]["codebook_from"] == tmp_path / "cb.glx"


def test_eval_bad_dataset_exits_with_input_error(tmp_path: Path, fake_engine: type[FakeIndex]) -> None:
    from glocal.cli.main import app

    result = CliRunner().invoke(app, ["eval", "roxford5k", "--data", str(tmp_path / "nowhere")])
    assert result.exit_code == 3
    assert "Traceback" not in result.output and "nowhere" in result.output
