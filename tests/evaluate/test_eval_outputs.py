"""Tables, JSON results, PNG figures and the HTML report."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glocal.evaluate import revisited_setups
from glocal.evaluate.plots import IGNORED, NEGATIVE, POSITIVE, plot_pr_curves, query_grid
from glocal.evaluate.protocol import SetupResult
from glocal.evaluate.report import write_report
from glocal.evaluate.tables import dataset_label, format_table, load_results_json, results_json, table_rows

GND = [{"easy": [1], "hard": [2], "junk": [3]}, {"easy": [0, 4], "hard": [], "junk": []}]
RANKS = np.array([[3, 2, 0, 1, 4], [0, 1, 4, 2, 3]])


def fake(map_value: float, mp10: float = 0.5) -> SetupResult:
    return SetupResult(map=map_value, aps=np.array([map_value]), mp={1: 1.0, 5: 0.8, 10: mp10}, prs=np.ones((1, 3)))


def test_dataset_labels() -> None:
    assert dataset_label("roxford5k") == "ROxf" and dataset_label("rparis6k+1m") == "RPar+1M"
    assert dataset_label("roxford5k+distractors") == "ROxf+distractors" and dataset_label("custom") == "custom"


def test_paper_table_markdown() -> None:
    results = {
        "SIFT-ASMK": {"rparis6k": {"medium": fake(0.5), "hard": fake(0.25)},
                      "roxford5k": {"medium": fake(0.4), "hard": fake(0.125)}},
        "other": {"roxford5k": {"medium": fake(0.6), "hard": fake(float("nan"))},
                  "roxford5k+1m": {"medium": fake(0.3), "hard": fake(0.1)}},
    }
    header, rows = table_rows(results)
    assert header == ["Method", "ROxf M", "ROxf H", "RPar M", "RPar H", "ROxf+1M M", "ROxf+1M H"]
    assert rows[0] == ["SIFT-ASMK", "40.0", "12.5", "50.0", "25.0", "-", "-"]
    assert rows[1] == ["other", "60.0", "-", "-", "-", "30.0", "10.0"]
    md = format_table(results)
    lines = md.splitlines()
    assert lines[0].startswith("| Method") and set(lines[1]) <= set("|-: ")
    assert len(lines) == 4
    text = format_table(results, with_mp10=True, style="text")
    assert "ROxf M mP@10" in text.splitlines()[0]


def test_results_json_round_trip(tmp_path: Path) -> None:
    setups = revisited_setups(RANKS, GND)
    doc = results_json(tmp_path / "r.json", setups, {"method": "sift", "crop": True, "path": tmp_path},
                       query_names=["q0", "q1"])
    on_disk = json.loads((tmp_path / "r.json").read_text())
    assert on_disk == json.loads(json.dumps(doc, default=str))
    assert set(on_disk) == {"easy", "medium", "hard", "settings"}
    assert on_disk["medium"]["map"] == pytest.approx(100 * setups["medium"].map)
    assert set(on_disk["medium"]["mp"]) == {"1", "5", "10"}
    assert on_disk["hard"]["ap"]["q1"] is None  # no hard positives for q1: null, not NaN
    assert on_disk["settings"]["method"] == "sift" and on_disk["settings"]["path"] == str(tmp_path)
    back, settings = load_results_json(tmp_path / "r.json")
    assert back["easy"].map == pytest.approx(setups["easy"].map)
    assert back["medium"].mp[10] == pytest.approx(setups["medium"].mp[10])
    assert settings["crop"] is True


def test_pr_curve_png(tmp_path: Path) -> None:
    out = plot_pr_curves(RANKS, GND, tmp_path / "pr.png", title="test")
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (640, 480)
        colors = {c for _, c in img.convert("RGB").getcolors(1 << 20)}
    assert (230, 130, 20) in colors  # the medium curve is drawn


def test_query_grid_png(tmp_path: Path) -> None:
    paths = []
    for i in range(5):
        p = tmp_path / f"db{i}.jpg"
        Image.new("RGB", (60, 40), (40 * i, 100, 100)).save(p)
        paths.append(p)
    query = tmp_path / "q.jpg"
    Image.new("RGB", (80, 60), (10, 10, 200)).save(query)
    out = query_grid(query, paths + [tmp_path / "missing.jpg"], [3, 1, 2, 5, -1], ok=[1], junk=[3],
                     out_path=tmp_path / "grid.png", box=(5, 5, 50, 40), top=10, thumb=48)
    with Image.open(out) as img:
        rgb = img.convert("RGB")
        colors = {c for _, c in rgb.getcolors(1 << 20)}
        assert rgb.width > 4 * 48
    assert {POSITIVE, NEGATIVE, IGNORED} <= colors


def test_html_report(tmp_path: Path) -> None:
    db = []
    for i in range(5):
        p = tmp_path / "img" / f"db{i}.jpg"
        p.parent.mkdir(exist_ok=True)
        Image.new("RGB", (30, 30), (50 * i, 0, 0)).save(p)
        db.append(p)
    index = write_report(tmp_path / "report", [db[0], db[1]], db, RANKS, GND, query_names=["q<0>", "q1"],
                         query_boxes=[(0, 0, 20, 20), None], settings={"method": "sift"}, top=4)
    page = index.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "q&lt;0&gt;" in page and "<img src='pr_curves.png'" in page
    assert page.count("<img src='queries/") == 2
    for rel in ("pr_curves.png", "queries/000.png", "queries/001.png"):
        with Image.open(tmp_path / "report" / rel) as img:
            assert img.format == "PNG"


def test_html_report_inline(tmp_path: Path) -> None:
    db = []
    for i in range(5):
        p = tmp_path / f"db{i}.jpg"
        Image.new("RGB", (30, 30), (0, 50 * i, 0)).save(p)
        db.append(p)
    page = write_report(tmp_path / "r", db[:2], db, RANKS, GND, inline_images=True, max_queries=1).read_text()
    assert page.count("src='data:image/png;base64,") == 2


def test_query_grid_outlines_database_regions(tmp_path: Path) -> None:
    from PIL import Image

    from glocal.evaluate.plots import query_grid

    grey = np.full((200, 300, 3), 90, np.uint8)
    q, d = tmp_path / "q.png", tmp_path / "d.png"
    Image.fromarray(grey).save(q)
    Image.fromarray(grey).save(d)
    plain = np.asarray(Image.open(query_grid(q, [d], [0], [0], [], tmp_path / "plain.png")))
    boxed = np.asarray(Image.open(query_grid(q, [d], [0], [0], [], tmp_path / "boxed.png",
                                             db_regions=[np.array([[30, 40, 150, 160]], np.float32)])))
    yellow = (boxed[..., 0] > 200) & (boxed[..., 1] > 180) & (boxed[..., 2] < 60)
    assert not ((plain[..., 0] > 200) & (plain[..., 1] > 180) & (plain[..., 2] < 60)).any()
    assert yellow.sum() > 100  # the region's outline, drawn on the result thumbnail only
