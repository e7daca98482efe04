"""Training data layouts (folder per class, labels.csv, revisited gnd), their errors, and tuple mining."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from glocal.errors import BadInputError

torch = pytest.importorskip("torch")
from glocal.train.data import read_gnd, read_labels_csv, read_training_set, split_classes  # noqa: E402
from glocal.train.tuples import average_precision, mean_average_precision, mine_tuples, tuple_loss  # noqa: E402


def test_folder_per_class(shapes: Path) -> None:
    ts = read_training_set(shapes)
    assert len(ts) == 22 and ts.class_names == ["class0", "class1", "class2", "class3"]
    assert (ts.labels == -1).sum() == 2 and len(ts.anchors()) == 20
    for f, c in zip(ts.files, ts.labels):
        assert (c == -1) == f.name.startswith("noise")
        if c >= 0:
            assert f.parent.name == ts.class_names[c]


def test_labels_csv_missing_images_counted_and_singletons_reported(shapes: Path) -> None:
    csv = shapes / "labels.csv"
    csv.write_text("file,label\nclass0/0.png,a\nclass0/1.png,a\nclass1/0.png,b\ngone.png,a\nnoise0.png,\n")
    ts = read_labels_csv(csv)
    assert len(ts) == 4 and ts.problems == [(str(shapes / "gone.png"), "missing")]
    assert ts.singletons == ["b"] and list(ts.labels) == [0, 0, 1, -1]
    assert ts.summary()["skipped"] == 1 and ts.summary()["single_image_classes"] == 1


@pytest.mark.parametrize("text,line", [("file,label\na.png,x\nb.png,x,extra\n", 3), ("name,label\na.png,x\n", 1),
                                       ("file,label\na.png,x\n,y\n", 3), ("", 1)])
def test_bad_labels_csv_is_one_line_naming_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text(text)
    with pytest.raises(BadInputError) as info:
        read_labels_csv(csv)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{csv}:{line}:")


def test_gnd_queries_sharing_positives_are_one_landmark(tmp_path: Path) -> None:
    (tmp_path / "jpg").mkdir()
    imlist = [f"db{i}" for i in range(8)]
    qimlist = ["q0", "q1", "q2"]
    for n in imlist + qimlist:
        (tmp_path / "jpg" / f"{n}.jpg").write_bytes(b"x")
    (tmp_path / "jpg" / "db7.jpg").unlink()
    gnd = [{"easy": [0, 1], "hard": [2], "junk": [3]}, {"easy": [2], "hard": [4], "junk": []},
           {"easy": [5], "hard": np.array([6]), "junk": [7]}]
    path = tmp_path / "gnd_x.pkl"
    path.write_bytes(pickle.dumps({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}))
    ts = read_gnd(path)
    assert ts.problems == [(str(tmp_path / "jpg" / "db7.jpg"), "missing")]
    names = [f.stem for f in ts.files]
    lab = dict(zip(names, ts.labels.tolist()))
    assert lab["q0"] == lab["q1"] == lab["db0"] == lab["db1"] == lab["db2"] == lab["db4"]
    assert lab["q2"] == lab["db5"] == lab["db6"] != lab["q0"] and lab["db3"] == -1
    assert ts.ignore == {lab["q0"]: frozenset({names.index("db3")})}


def test_unsafe_gnd_pickle_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"imlist": [Path("x")], "qimlist": [], "gnd": []}))
    with pytest.raises(BadInputError, match="refuses to load global"):
        read_gnd(path)


def test_split_holds_out_whole_classes(shapes: Path) -> None:
    ts = read_training_set(shapes)
    train, held = split_classes(ts, 0.25, seed=0)
    held_classes = set(held.labels[held.labels >= 0].tolist())
    assert len(held_classes) == 1 and not held_classes & set(train.labels.tolist())
    assert (held.labels == -1).sum() == 2 and len(train) + len(held) == len(ts) + 2


def test_mining_takes_the_hardest_negative_of_each_other_class(shapes: Path) -> None:
    ts = read_training_set(shapes)
    rng = np.random.default_rng(1)
    desc = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(len(ts), 8))), dim=1)
    tuples = mine_tuples(ts, lambda ids: desc[ids], negatives=3, generator=torch.Generator().manual_seed(0))
    assert len(tuples) == 20
    sims = (desc @ desc.T).numpy()
    for q, p, *negs in tuples.rows:
        c = ts.labels[q]
        assert p != q and ts.labels[p] == c
        groups = [ts.labels[n] if ts.labels[n] >= 0 else -1 - n for n in negs]
        assert all(ts.labels[n] != c for n in negs) and len(set(groups)) == 3
        # the first negative is the most similar image of another class
        others = [i for i in range(len(ts)) if ts.labels[i] != c]
        assert negs[0] == max(others, key=lambda i: sims[q, i])
        assert sims[q, negs[0]] >= sims[q, negs[1]] >= sims[q, negs[2]]


def test_contrastive_loss_is_the_equation() -> None:
    q = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[0.6, 0.8]])
    n1, n2 = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.8, 0.6]])
    d_p, d_n1, d_n2 = (q - p).norm(), (q - n1).norm(), (q - n2).norm()
    tau = 0.7
    expected = 0.5 * d_p ** 2 + 0.5 * max(0.0, tau - d_n1) ** 2 + 0.5 * max(0.0, tau - d_n2) ** 2
    assert torch.isclose(tuple_loss(torch.cat([q, p, n1, n2]), tau), expected)


def test_mean_average_precision(shapes: Path) -> None:
    ts = read_training_set(shapes)
    perfect = torch.nn.functional.one_hot(torch.from_numpy(np.maximum(ts.labels, 0)), 4).float()
    perfect[ts.labels < 0] = torch.tensor([0.5, 0.5, 0.5, 0.5])
    assert mean_average_precision(perfect, ts) == pytest.approx(1.0)
    assert average_precision(np.array([True, False, True, False]), 2) == pytest.approx((1 + 2 / 3) / 2)
    # class 0 drawn as class 1: for their 9 queries the 4 (or 5) other-class images tie with the positives
    merged = perfect.clone()
    merged[ts.labels == 0] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    assert 0.4 < mean_average_precision(merged, ts) < 0.9
