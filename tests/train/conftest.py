"""Synthetic training images: one coloured shape per class on a noisy background, drawn in the test; and the
launch of a worker script as two torchrun ranks."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

COLOURS = [(220, 40, 40), (40, 200, 60), (50, 80, 230), (230, 200, 40), (200, 60, 220), (40, 210, 210)]


def draw_shape(cls: int, rng: np.random.Generator, side: int = 48) -> Image.Image:
    """Class ``cls``: its own colour and shape, random place and size, on noise."""
    noise = rng.integers(0, 90, size=(side, side, 3), dtype=np.uint8)
    img = Image.fromarray(noise)
    d = ImageDraw.Draw(img)
    r = int(rng.integers(side // 5, side // 3))
    cx, cy = (int(v) for v in rng.integers(r, side - r, size=2))
    box = (cx - r, cy - r, cx + r, cy + r)
    colour = COLOURS[cls % len(COLOURS)]
    kind = cls % 3
    if kind == 0:
        d.ellipse(box, fill=colour)
    elif kind == 1:
        d.rectangle(box, fill=colour)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return img


def write_folder_per_class(root: Path, classes: int = 4, per_class: int = 5, seed: int = 0,
                           distractors: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw_shape(c, rng).save(root / f"class{c}" / f"{i}.png")
    for i in range(distractors):
        Image.fromarray(rng.integers(0, 255, size=(48, 48, 3), dtype=np.uint8)).save(root / f"noise{i}.png")
    return root


@pytest.fixture
def shapes(tmp_path: Path) -> Path:
    """A folder per class: 4 classes of 5 images, 2 distractors."""
    return write_folder_per_class(tmp_path / "shapes", distractors=2)


@pytest.fixture
def small_shapes(tmp_path: Path) -> Path:
    """A folder per class: 3 classes of 3 images (the fastest set a tuples run can mine)."""
    return write_folder_per_class(tmp_path / "small_shapes", classes=3, per_class=3)


@pytest.fixture
def two_ranks() -> Callable[..., tuple[Path, list[dict]]]:
    """Runs ``worker`` (a script path) as two gloo ranks under ``torch.distributed.run`` with the arguments
    ``data``, ``run``, OUT and ``extra``: this checkout first on the path, one thread each, no rank variables
    inherited, a free port; killed after 300 s (a rank left waiting in an all-reduce hangs). Asserts that it
    ended well and returns OUT (``run``'s sibling ``<run>-ranks``) and the two ranks' saved ``rank-R.pt``."""
    repo = Path(__file__).resolve().parents[2]

    def launch(worker: Path, data: Path, run: Path, *extra: object) -> tuple[Path, list[dict]]:
        import torch

        out = run.with_name(run.name + "-ranks")
        out.mkdir()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
               "OMP_NUM_THREADS": "1"}
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(port), str(worker), str(data), str(run), str(out), *(str(a) for a in extra)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return out, [torch.load(out / f"rank-{r}.pt", weights_only=True) for r in (0, 1)]

    return launch
