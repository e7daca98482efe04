"""Dataset loaders on generated fixture folders (no shared data)."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glocal.evaluate import DatasetError, add_distractors, load_custom, load_dataset, load_revisited
from glocal.evaluate.datasets import find_gnd, load_r1m
from glocal.io.safe_pickle import UnsafePickleError


def write_image(path: Path, color: tuple[int, int, int] = (120, 60, 30), size: tuple[int, int] = (24, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def make_revisited(root: Path, name: str = "roxford5k", gnd_file: Path | None = None) -> dict:
    """A tiny revisitop-style dataset: 6 database images, 2 queries (which are also database images)."""
    imlist = [f"{name}_db_{i}" for i in range(6)]
    qimlist = [imlist[0], "query_only"]
    for n in imlist + ["query_only"]:
        write_image(root / "jpg" / f"{n}.jpg")
    cfg = {
        "imlist": imlist,
        "qimlist": qimlist,
        "gnd": [
            {"easy": np.array([1, 2]), "hard": [3], "junk": [4], "bbx": [1.0, 2.0, 20.0, 14.0]},
            {"easy": [], "hard": [5], "junk": [], "bbx": np.array([0.0, 0.0, 24.0, 16.0])},
        ],
    }
    target = gnd_file or root / f"gnd_{name}.pkl"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as f:
        pickle.dump(cfg, f)
    return cfg


def test_load_revisited_official_layout(tmp_path: Path) -> None:
    root = tmp_path / "roxford5k"
    make_revisited(root)
    ds = load_revisited("roxford5k", root)
    assert ds.n_database == 6 and ds.n_queries == 2
    assert ds.db_paths[2] == root / "jpg" / "roxford5k_db_2.jpg"
    assert ds.query_paths[1] == root / "jpg" / "query_only.jpg"
    assert ds.query_boxes == [(1.0, 2.0, 20.0, 14.0), (0.0, 0.0, 24.0, 16.0)]
    assert ds.gnd[0]["easy"] == [1, 2] and ds.gnd[0]["hard"] == [3] and ds.gnd[0]["junk"] == [4]
    assert ds.query_box(0) == (1.0, 2.0, 20.0, 14.0)


def test_no_crop(tmp_path: Path) -> None:
    make_revisited(tmp_path)
    ds = load_revisited("roxford5k", tmp_path, crop=False)
    assert ds.query_boxes is None and ds.query_box(0) is None


def test_ground_truth_in_parent_folder_with_subset_name(tmp_path: Path) -> None:
    root = tmp_path / "roxford5k"
    make_revisited(root, gnd_file=tmp_path / "gnd_roxford5k_subset.pkl")
    make_revisited(tmp_path / "rparis6k", name="rparis6k", gnd_file=tmp_path / "gnd_rparis6k_subset.pkl")
    assert find_gnd("roxford5k", root) == tmp_path / "gnd_roxford5k_subset.pkl"
    assert load_revisited("roxford5k", root).n_database == 6


def test_exact_name_preferred(tmp_path: Path) -> None:
    make_revisited(tmp_path)
    make_revisited(tmp_path, gnd_file=tmp_path / "gnd_roxford5k_subset.pkl")
    assert find_gnd("roxford5k", tmp_path) == tmp_path / "gnd_roxford5k.pkl"


def test_explicit_gnd_path(tmp_path: Path) -> None:
    make_revisited(tmp_path, gnd_file=tmp_path / "elsewhere" / "my_truth.pkl")
    ds = load_revisited("roxford5k", tmp_path, gnd_path=tmp_path / "elsewhere" / "my_truth.pkl")
    assert ds.n_queries == 2


def test_missing_ground_truth_names_folders(tmp_path: Path) -> None:
    (tmp_path / "jpg").mkdir()
    with pytest.raises(DatasetError, match="gnd_roxford5k"):
        load_revisited("roxford5k", tmp_path)


def test_missing_images_are_reported(tmp_path: Path) -> None:
    make_revisited(tmp_path)
    os.remove(tmp_path / "jpg" / "roxford5k_db_3.jpg")
    with pytest.raises(DatasetError, match="1 of 6 database images are missing"):
        load_revisited("roxford5k", tmp_path)
    assert load_revisited("roxford5k", tmp_path, check_files=False).n_database == 6


def test_out_of_range_index_is_an_error(tmp_path: Path) -> None:
    cfg = make_revisited(tmp_path)
    cfg["gnd"][0]["easy"] = [99]
    with open(tmp_path / "gnd_roxford5k.pkl", "wb") as f:
        pickle.dump(cfg, f)
    with pytest.raises(DatasetError, match="out of range"):
        load_revisited("roxford5k", tmp_path)


class _Exploit:
    def __reduce__(self) -> tuple:
        return (os.getcwd, ())


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    (tmp_path / "jpg").mkdir()
    with open(tmp_path / "gnd_roxford5k.pkl", "wb") as f:
        pickle.dump({"imlist": [], "qimlist": [], "gnd": [], "x": _Exploit()}, f)
    with pytest.raises(UnsafePickleError, match="posix.getcwd|os.getcwd|nt.getcwd"):
        load_revisited("roxford5k", tmp_path)


def test_add_distractors_keeps_ground_truth(tmp_path: Path) -> None:
    make_revisited(tmp_path / "ox")
    for i in range(3):
        write_image(tmp_path / "extra" / "sub" / f"other_{i}.png")
    ds = load_revisited("roxford5k", tmp_path / "ox")
    big = add_distractors(ds, tmp_path / "extra")
    assert big.n_database == 9 and big.n_distractors == 3
    assert big.db_names[:6] == ds.db_names and big.db_names[6] == "sub/other_0"
    assert big.gnd == ds.gnd and big.name == "roxford5k+distractors"
    assert ds.n_database == 6  # the original is unchanged


def test_distractor_name_clash_is_an_error(tmp_path: Path) -> None:
    make_revisited(tmp_path / "ox")
    write_image(tmp_path / "extra" / "roxford5k_db_1.jpg")
    with pytest.raises(DatasetError, match="already database images"):
        add_distractors(load_revisited("roxford5k", tmp_path / "ox"), tmp_path / "extra")


def test_r1m_layout(tmp_path: Path) -> None:
    make_revisited(tmp_path / "ox")
    r1m = tmp_path / "revisitop1m"
    write_image(r1m / "jpg" / "ab" / "cd" / "img1.jpg")
    write_image(r1m / "jpg" / "ab" / "img2.jpg")
    (r1m / "revisitop1m.txt").write_text("ab/cd/img1.jpg\nab/img2\n")
    ds = load_revisited("roxford5k", tmp_path / "ox")
    for big in (load_r1m(ds, r1m), add_distractors(ds, r1m)):
        assert big.name == "roxford5k+1m" and big.n_distractors == 2
        assert big.db_paths[-1] == r1m / "jpg" / "ab" / "img2.jpg"


def make_custom(root: Path) -> None:
    for n in ("q1.jpg", "q2.jpg", "a.jpg", "b.jpg", "sub/c.jpg"):
        write_image(root / n)


def test_custom_json(tmp_path: Path) -> None:
    make_custom(tmp_path)
    (tmp_path / "groundtruth.json").write_text(json.dumps({"queries": [
        {"image": "q1.jpg", "bbox": [1, 2, 10, 12], "positives": ["a.jpg", "sub/c.jpg"], "junk": ["b.jpg"]},
        {"image": "q2.jpg", "positives": ["b.jpg"]},
    ]}))
    ds = load_custom(tmp_path)
    assert ds.db_names == ["a.jpg", "b.jpg", "sub/c.jpg"]  # queries are not in the default database
    assert ds.gnd == [{"ok": [0, 2], "junk": [1]}, {"ok": [1], "junk": []}]
    assert ds.query_boxes == [(1.0, 2.0, 10.0, 12.0), None]
    assert load_dataset("custom", tmp_path, crop=False).query_boxes is None


def test_custom_json_explicit_database_and_errors(tmp_path: Path) -> None:
    make_custom(tmp_path)
    gt = tmp_path / "truth.json"
    gt.write_text(json.dumps({"database": ["a.jpg", "q2.jpg"], "queries": [{"image": "q1.jpg", "positives": ["q2.jpg"]}]}))
    ds = load_custom(tmp_path, gt)
    assert ds.db_names == ["a.jpg", "q2.jpg"] and ds.gnd[0]["ok"] == [1]
    gt.write_text(json.dumps({"queries": [{"image": "q1.jpg", "positives": ["nope.jpg"]}]}))
    with pytest.raises(DatasetError, match=r"truth.json: query q1.jpg: unknown image nope.jpg in positives"):
        load_custom(tmp_path, gt)
    gt.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_custom(tmp_path, gt)


def test_custom_csv(tmp_path: Path) -> None:
    make_custom(tmp_path)
    (tmp_path / "groundtruth.csv").write_text(
        "query,positives,junk,x1,y1,x2,y2\n"
        "q1.jpg,a.jpg;sub/c.jpg,b.jpg,1,2,10,12\n"
        "q2.jpg,b.jpg,,,,,\n"
    )
    ds = load_custom(tmp_path)
    assert ds.query_names == ["q1.jpg", "q2.jpg"]
    assert ds.gnd == [{"ok": [0, 2], "junk": [1]}, {"ok": [1], "junk": []}]
    assert ds.query_boxes == [(1.0, 2.0, 10.0, 12.0), None]


def test_custom_csv_bad_header(tmp_path: Path) -> None:
    make_custom(tmp_path)
    (tmp_path / "groundtruth.csv").write_text("image,matches\nq1.jpg,a.jpg\n")
    with pytest.raises(DatasetError, match="groundtruth.csv: the CSV header needs"):
        load_custom(tmp_path)


def test_unknown_dataset_name(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("holidays", tmp_path)
