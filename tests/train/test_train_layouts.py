"""Google Landmarks v2 train CSV and SfM-120k database layouts on generated images: paths, classes, pairs,
missing / unreadable images listed, one-line errors naming file and line, single-image classes reported,
and the SfM pairs drive the mined tuples."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from glocal.errors import BadInputError

torch = pytest.importorskip("torch")
from PIL import Image  # noqa: E402

from glocal.io.safe_pickle import UnsafePickleError  # noqa: E402
from glocal.train.data import read_training_set, split_classes  # noqa: E402
from glocal.train.loop import TrainConfig, train_tuples  # noqa: E402
from glocal.train.tuples import mine_tuples  # noqa: E402


def draw_shape(c: int, rng: np.random.Generator) -> Image.Image:
    """A 40 x 40 image: noise with a square whose colour is the class's."""
    a = rng.integers(0, 80, size=(40, 40, 3), dtype=np.uint8)
    a[10:30, 10:30] = ((c * 97) % 256, (c * 57 + 120) % 256, (c * 31 + 60) % 256)
    return Image.fromarray(a)


def _gld_id(k: int) -> str:
    return f"{(k * 2654435761) % 16**16:016x}"


def write_gldv2(root: Path, landmarks: dict[int, int], clean: bool) -> tuple[Path, dict[str, int]]:
    """Images at ``root/train/a/b/c/<id>.jpg`` and the CSV in either form; returns the CSV and id -> landmark."""
    rng = np.random.default_rng(1)
    ids: dict[str, int] = {}
    k = 0
    for lm, n in landmarks.items():
        for _ in range(n):
            image_id = _gld_id(k)
            k += 1
            ids[image_id] = lm
            p = root / "train" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            draw_shape(lm, rng).save(p)
    if clean:
        lines = ["landmark_id,images"] + [f"{lm}," + " ".join(i for i, v in ids.items() if v == lm)
                                          for lm in landmarks]
        csv = root / "train_clean.csv"
    else:
        lines = ["id,url,landmark_id"] + [f'{i},"https://example.org/a,{i}.jpg",{lm}' for i, lm in ids.items()]
        csv = root / "train.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv, ids


@pytest.mark.parametrize("clean", [False, True])
def test_gldv2_csv_both_forms(tmp_path: Path, clean: bool) -> None:
    csv, ids = write_gldv2(tmp_path, {7: 3, 12: 4, 30: 1}, clean)
    gone = next(iter(ids))
    (tmp_path / "train" / gone[0] / gone[1] / gone[2] / f"{gone}.jpg").unlink()
    ts = read_training_set(csv)
    assert ts.source.startswith("Google Landmarks v2 csv")
    assert len(ts) == 7 and ts.class_names == ["12", "30", "7"]
    assert [Path(p).name for p, r in ts.problems] == [f"{gone}.jpg"] and ts.problems[0][1] == "missing"
    assert ts.singletons == ["30"] and ts.summary()["skipped"] == 1 and len(ts.anchors()) == 6
    for f, c in zip(ts.files, ts.labels):
        stem = f.stem
        assert f.parent == tmp_path / "train" / stem[0] / stem[1] / stem[2]
        assert ts.class_names[c] == str(ids[stem])


@pytest.mark.parametrize("text,line", [
    ("id,url,landmark_id\nabc1,u,1\nabc2,u\n", 3),            # a missing field
    ("id,url,landmark_id\nabc1,u,1\nabc2,u,x\n", 3),          # landmark_id not an integer
    ("id,url,landmark_id\nabc1,u,\n", 2),                     # empty landmark_id
    ("id,url,landmark_id\n../etc,u,3\n", 2),                  # an id that would leave the images folder
    ("landmark_id,images\n4,abc1 abc2\n5,\n", 3),             # a landmark without images
    ("landmark_id,photo\n4,abc1\n", 1),                       # neither header
])
def test_bad_gldv2_csv_is_one_line_naming_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    csv = tmp_path / "train.csv"
    csv.write_text(text)
    with pytest.raises(BadInputError) as info:
        read_training_set(csv)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{csv}:{line}:"), msg


def write_sfm(root: Path, clusters: list[int], pairs: list[tuple[int, int]], with_suffix: bool = False) -> Path:
    """Images at ``root/ims/cid[-2:]/cid[-4:-2]/cid[-6:-4]/cid`` and the database pickle (plain builtins and
    numpy, as the published one)."""
    rng = np.random.default_rng(2)
    cids = [f"{(k + 1) * 7919:06d}{'ab'[k % 2]}{k:05d}" for k in range(len(clusters))]
    for cid, c in zip(cids, clusters):
        p = root / "ims" / cid[-2:] / cid[-4:-2] / cid[-6:-4] / (cid + (".jpg" if with_suffix else ""))
        p.parent.mkdir(parents=True, exist_ok=True)
        draw_shape(c, rng).save(p, format="JPEG")
    split = {"cids": cids, "cluster": np.array(clusters), "qidxs": [q for q, _ in pairs],
             "pidxs": [p for _, p in pairs]}
    path = root / "retrieval-SfM-120k.pkl"
    path.write_bytes(pickle.dumps({"train": split, "val": {"cids": [], "cluster": [], "qidxs": [], "pidxs": []}}))
    return path


CLUSTERS = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
PAIRS = [(0, 1), (1, 2), (3, 4), (5, 4), (6, 7), (8, 6)]


@pytest.mark.parametrize("with_suffix", [False, True])
def test_sfm_database(tmp_path: Path, with_suffix: bool) -> None:
    pkl = write_sfm(tmp_path, CLUSTERS, PAIRS, with_suffix)
    (tmp_path / "ims" / "x").mkdir()
    ts = read_training_set(pkl)
    assert ts.source.startswith("SfM-120k database") and len(ts) == 10 and not ts.problems
    assert ts.pairs is not None and ts.pairs.tolist() == [list(p) for p in PAIRS]
    assert ts.singletons == ["cluster-3"] and ts.summary()["pairs"] == 6
    assert ts.anchors().tolist() == [0, 1, 3, 5, 6, 8]
    f = ts.files[4]
    cid = f.name.removesuffix(".jpg")
    assert f.parent == tmp_path / "ims" / cid[-2:] / cid[-4:-2] / cid[-6:-4]
    # held-out clusters take their pairs with them; the kept pairs are renumbered
    train, held = split_classes(ts, 0.34, seed=0)
    assert len(train.pairs) + len(held.pairs) == 6
    for part in (train, held):
        for q, p in part.pairs:
            assert part.labels[q] == part.labels[p] >= 0


def test_sfm_missing_and_unreadable_images_listed(tmp_path: Path) -> None:
    pkl = write_sfm(tmp_path, CLUSTERS, PAIRS)
    ts = read_training_set(pkl)
    gone, broken = ts.files[1], ts.files[6]
    gone.unlink()
    broken.write_bytes(b"not a jpeg")
    ts = read_training_set(pkl)
    assert len(ts) == 9 and ts.problems[0][1] == "missing"
    assert ts.pairs.tolist() == [[2, 3], [4, 3], [5, 6], [7, 5]]  # the pairs with image 1 dropped, renumbered
    cfg = TrainConfig(steps=1, batch=2, negatives=1, image_size=32, lr=1e-3)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    result = train_tuples(net, "imagenet", ts, None, cfg, tmp_path / "run")
    assert [Path(p) for p, _ in result.problems] == [gone, broken]


def test_sfm_tuples_use_the_listed_pairs(tmp_path: Path) -> None:
    ts = read_training_set(write_sfm(tmp_path, CLUSTERS, PAIRS))
    rows = mine_tuples(ts, lambda ids: torch.nn.functional.normalize(torch.randn(len(ids), 8), dim=1), 2,
                       torch.Generator().manual_seed(0)).rows
    assert sorted(map(tuple, rows[:, :2].tolist())) == sorted(PAIRS)
    for row in rows:
        assert all(ts.labels[n] != ts.labels[row[0]] for n in row[2:] if n >= 0)


@pytest.mark.parametrize("db,needle", [
    ({"train": {"cids": ["abcdef01"], "cluster": [0], "qidxs": [0]}, "val": {}}, "lacks 'pidxs'"),
    ({"train": {"cids": ["abcdef01"], "cluster": [0], "qidxs": [3], "pidxs": [0]}, "val": {}}, "outside 0..0"),
    ({"train": {"cids": ["../../etc/x"], "cluster": [0], "qidxs": [], "pidxs": []}, "val": {}}, "cid 0"),
    ({"train": {"cids": ["abcdef01"], "cluster": [0, 1], "qidxs": [], "pidxs": []}, "val": {}}, "2 cluster"),
])
def test_bad_sfm_database_is_one_line(tmp_path: Path, db: dict, needle: str) -> None:
    pkl = tmp_path / "db.pkl"
    pkl.write_bytes(pickle.dumps(db))
    with pytest.raises(BadInputError) as info:
        read_training_set(pkl)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{pkl}:") and needle in msg, msg


class Evil:
    def __reduce__(self) -> tuple:
        return (print, ("pwned",))


def test_sfm_pickle_goes_through_the_restricted_unpickler(tmp_path: Path) -> None:
    pkl = tmp_path / "db.pkl"
    pkl.write_bytes(pickle.dumps({"train": {"cids": [Evil()]}, "val": {}}))
    with pytest.raises(UnsafePickleError):
        read_training_set(pkl)


def test_readme_worked_example_writes_both_layouts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- layouts-example -->\n```python\n", 1)[1].split("\n```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {"__name__": "readme_example"})
    (tmp_path / "gld/train/c/8/1/c81e728d9d4c2f63.jpg").unlink()  # as the README's example does
    gld = read_training_set(tmp_path / "gld" / "train.csv")
    assert len(gld) == 7 and gld.class_names == ["17", "42", "99"] and gld.singletons == ["99"]
    assert [Path(p).name for p, _ in gld.problems] == ["c81e728d9d4c2f63.jpg"]
    sfm = read_training_set(tmp_path / "sfm" / "retrieval-SfM-120k.pkl")
    assert len(sfm) == 8 and len(sfm.class_names) == 3 and sfm.pairs.tolist() == [[0, 1], [1, 2], [3, 4],
                                                                                   [4, 5], [6, 7]]
    with (tmp_path / "gld" / "train.csv").open("a") as fh:
        fh.write("a87ff679a2f3e71d,u,x\n")
    with pytest.raises(BadInputError, match=r"train\.csv:10: landmark_id 'x' is not an integer"):
        read_training_set(tmp_path / "gld" / "train.csv")
