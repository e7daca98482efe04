"""``glocal eval custom`` from a ``labels.csv`` (file,label): every image a query against all the others,
positives = same label (issue 19 item 7); errors name the file, the line and the image."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from glocal.errors import BadInputError
from glocal.evaluate.datasets import load_custom

runner = CliRunner()


def _tiny_jpeg(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (120, 30, 60)).save(path)


def _folder(root: Path, rows: list[str], files: list[str]) -> Path:
    for f in files:
        _tiny_jpeg(root / f)
    (root / "labels.csv").write_text("\n".join(["file,label", *rows]) + "\n", encoding="utf-8")
    return root


def test_every_labelled_image_is_a_query_with_its_label_as_positives(tmp_path: Path) -> None:
    files = ["bridge/1.jpg", "bridge/2.jpg", "bridge/3.jpg", "tower/a.jpg", "tower/b.jpg", "lonely.jpg", "street.jpg"]
    rows = ["bridge/1.jpg,bridge", "bridge/2.jpg,bridge", "bridge/3.jpg,bridge", "tower/a.jpg,tower",
            "tower/b.jpg,tower", "lonely.jpg,lonely", "street.jpg,"]
    ds = load_custom(_folder(tmp_path, rows, files))  # labels.csv found by default
    assert ds.db_names == files  # every listed image, the unlabelled one too (a distractor)
    assert ds.query_names == files[:6]  # every labelled image; never the unlabelled one
    idx = {n: i for i, n in enumerate(ds.db_names)}
    first = ds.gnd[0]
    assert sorted(first["ok"]) == [idx["bridge/2.jpg"], idx["bridge/3.jpg"]] and first["junk"] == [idx["bridge/1.jpg"]]
    assert ds.gnd[3] == {"ok": [idx["tower/b.jpg"]], "junk": [idx["tower/a.jpg"]]}
    assert ds.gnd[5] == {"ok": [], "junk": [idx["lonely.jpg"]]}  # no other image with its label: not scored
    assert ds.query_boxes == [None] * 6


def test_unknown_image_names_file_line_and_image(tmp_path: Path) -> None:
    root = _folder(tmp_path, ["a.jpg,x", "b.jpg,x", "missing/c.jpg,y"], ["a.jpg", "b.jpg"])
    with pytest.raises(BadInputError) as caught:
        load_custom(root)
    assert str(caught.value).startswith(f"{root / 'labels.csv'}: line 4: unknown image missing/c.jpg")


def test_listed_twice_and_bad_header(tmp_path: Path) -> None:
    root = _folder(tmp_path / "twice", ["a.jpg,x", "b.jpg,x", "a.jpg,y"], ["a.jpg", "b.jpg"])
    with pytest.raises(BadInputError, match=r"labels.csv: line 4: image a.jpg is listed twice \(first on line 2\)"):
        load_custom(root)
    other = tmp_path / "header"
    _tiny_jpeg(other / "a.jpg")
    (other / "my.csv").write_text("image,class\na.jpg,x\n", encoding="utf-8")
    with pytest.raises(BadInputError, match="needs columns 'query' and 'positives'"):  # not labels: the query CSV
        load_custom(other, gt_path=other / "my.csv")


def test_query_csv_unknown_image_names_the_line(tmp_path: Path) -> None:
    for f in ("q.jpg", "a.jpg"):
        _tiny_jpeg(tmp_path / f)
    (tmp_path / "groundtruth.csv").write_text("query,positives\nq.jpg,a.jpg\nq.jpg,nope.jpg\n", encoding="utf-8")
    with pytest.raises(BadInputError, match=r"groundtruth.csv: line 3: query q.jpg: unknown image nope.jpg"):
        load_custom(tmp_path)


def test_eval_custom_with_labels_csv_scores_every_image(demo_benchmark, tmp_path: Path) -> None:
    """End to end: two landmarks, three photos each, plus a distractor; sift finds each photo's siblings."""
    from glocal.cli.main import app

    rows = []
    for lm in ("astronaut", "camera"):
        for p in [p for p in demo_benchmark.db_paths if p.stem.startswith(lm) and "tiny" not in p.stem][:3]:
            (tmp_path / lm).mkdir(exist_ok=True)
            shutil.copy(p, tmp_path / lm / p.name)
            rows.append(f"{lm}/{p.name},{lm}")
    shutil.copy(next(p for p in demo_benchmark.db_paths if p.stem.startswith("distractor")), tmp_path / "street.jpg")
    (tmp_path / "labels.csv").write_text("\n".join(["file,label", *rows, "street.jpg,"]) + "\n", encoding="utf-8")
    json_out = tmp_path / "scores.json"
    res = runner.invoke(app, ["eval", "custom", "--data", str(tmp_path), "--json", str(json_out)],
                        env={"GLOCAL_PROGRESS": "0"})
    assert res.exit_code == 0, res.output
    assert "custom: 6 queries, 7 database images" in res.output
    import json

    scores = json.loads(json_out.read_text())
    assert scores["all"]["n_queries"] == 6 and scores["all"]["map"] > 50  # percent, 2 positives among 6 others


def _readme_block(language: str, starts: str) -> str:
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(rf"```{language}\n(.*?)```", readme, flags=re.S)
    return next(b for b in blocks if b.startswith(starts))


def test_the_readme_examples_load_as_the_readme_says(tmp_path: Path) -> None:
    labels = _readme_block("csv", "file,label")
    names = [line.split(",")[0] for line in labels.splitlines()[1:]]
    for n in names:
        _tiny_jpeg(tmp_path / "labels" / n)
    (tmp_path / "labels" / "labels.csv").write_text(labels, encoding="utf-8")
    ds = load_custom(tmp_path / "labels")
    q = ds.query_names.index("tower/a.jpg")
    assert sorted(ds.db_names[i] for i in ds.gnd[q]["ok"]) == ["tower/b.jpg", "tower/c.jpg"]
    assert len(ds.db_names) == 6 and "street.jpg" not in ds.query_names

    gt = _readme_block("json", '{"database"')
    for n in ("a.jpg", "sub/b.jpg", "q1.jpg"):
        _tiny_jpeg(tmp_path / "json" / n)
    (tmp_path / "json" / "groundtruth.json").write_text(gt, encoding="utf-8")
    ds = load_custom(tmp_path / "json")
    assert ds.query_names == ["q1.jpg"] and ds.gnd == [{"ok": [0], "junk": [1]}]
    assert ds.query_boxes == [(10.0, 20.0, 300.0, 400.0)]
