"""Every command that can need an extra says which one, in one line, exit status 4 (issue 19 item 6).

Each case runs ``glocal`` in a subprocess with the extra's modules made unimportable: a ``sitecustomize``
on ``PYTHONPATH`` sets ``sys.modules[name] = None`` for each, which is what Python does for a module that is
not installed (``import`` raises ``ModuleNotFoundError``, ``importlib.util.find_spec`` answers None). The
methods are taken from the registry by the extras they declare.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from glocal.methods import all_specs
from glocal.methods.spec import EXTRA_MODULES

REPO = Path(__file__).resolve().parents[2]
SHIM = """import os, sys
for _name in os.environ.get("GLOCAL_TEST_BLOCK", "").split(","):
    if _name:
        sys.modules[_name] = None
"""


def _method(needs: str, without: tuple[str, ...] = ()) -> str:
    """A registered method whose extras include ``needs`` (and none of ``without``)."""
    return next(s.name for s in all_specs() if needs in s.extras and not set(without) & set(s.extras))


def _method_with_runtime() -> str:
    """A method whose extractor has a ``runtime`` option (ONNX Runtime can run it)."""
    return next(s.name for s in all_specs() if "deep" in s.extras and hasattr(s.extractor, "runtime")
                and "pretrained" not in s.extras)


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shim")
    (folder / "sitecustomize.py").write_text(SHIM, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("extras")
    rng = np.random.default_rng(0)
    photo = root / "photos" / "a.jpg"
    photo.parent.mkdir()
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(photo)
    (root / "photos" / "labels.csv").write_text("file,label\na.jpg,x\n", encoding="utf-8")
    return {"root": root, "photo": photo, "photos": photo.parent}


def glocal_without(shim: Path, extra: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    modules = ",".join(EXTRA_MODULES[extra])
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLOCAL_")}
    env |= {"PYTHONPATH": f"{shim}{os.pathsep}{REPO}", "GLOCAL_TEST_BLOCK": modules, "GLOCAL_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "glocal", *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=cwd)


def _cases(files: dict[str, Path]) -> list[tuple[str, list[str]]]:
    photo, photos, out = str(files["photo"]), str(files["photos"]), str(files["root"] / "out")
    deep = _method("deep", without=("pretrained",))
    pretrained = _method("pretrained")
    onnx = _method_with_runtime()
    attention = next(s.name for s in all_specs() if "attention" in s.capabilities)
    return [
        ("deep", ["index", "build", photos, "--method", deep, "--out", f"{out}/a.glx"]),
        ("deep", ["extract", photos, "--method", deep, "--out", f"{out}/feats"]),
        ("deep", ["eval", "custom", "--data", photos, "--method", deep]),
        ("deep", ["whiten", photos, "--out", f"{out}/w.pt"]),
        ("deep", ["visualize", "attention", photo, "--out", f"{out}/att.png"]),
        ("deep", ["visualize", "attention", photo, "--method", attention, "--out", f"{out}/att.png"]),
        ("pretrained", ["index", "build", photos, "--method", pretrained, "--out", f"{out}/p.glx"]),
        ("onnx", ["index", "build", photos, "--method", onnx, "--set", 'runtime="onnx"', "--out", f"{out}/o.glx"]),
        ("onnx", ["extract", photos, "--method", onnx, "--set", 'runtime="onnx"', "--out", f"{out}/of"]),
        ("serve", ["serve", f"{out}/none.glx"]),
        ("distributed", ["extract", photos, "--ray", "local", "--out", f"{out}/rf"]),
    ]


def test_each_command_that_needs_an_extra_names_it_in_one_line(shim: Path, files: dict[str, Path]) -> None:
    failures = []
    for extra, args in _cases(files):
        res = glocal_without(shim, extra, *args)
        lines = res.stderr.strip().splitlines()
        ok = (res.returncode == 4 and len(lines) == 1 and lines[0].startswith("error: ")
              and f"pip install 'glocal[{extra}]'" in lines[0])
        if not ok:
            failures.append(f"glocal {' '.join(args)} without [{extra}]: exit {res.returncode}, stderr {res.stderr!r}")
    assert not failures, "\n".join(failures)


def test_extraction_without_ray_needs_no_ray(shim: Path, files: dict[str, Path]) -> None:
    """Ray is imported only for --ray: the single-process extraction runs without it."""
    res = glocal_without(shim, "distributed", "extract", str(files["photos"]), "--out", str(files["root"] / "noray"))
    assert res.returncode == 0 and "extracted 1 images into 1 shards" in res.stdout, res.stderr
    refused = glocal_without(shim, "distributed", "extract", str(files["photos"]), "--ray", "local", "--out",
                             str(files["root"] / "rf2"))
    assert refused.returncode == 4 and not (files["root"] / "rf2").exists()  # refused before writing anything


def test_the_shim_really_hides_the_module(shim: Path) -> None:
    """The check above means something: with the shim, the module cannot be imported or found."""
    code = ("import importlib.util, sys\ntry:\n    import torch\n    print('imported')\nexcept ImportError:\n"
            "    print('blocked', importlib.util.find_spec('torch'))\n")
    env = os.environ | {"PYTHONPATH": str(shim), "GLOCAL_TEST_BLOCK": "torch"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert res.stdout.strip() == "blocked None", res.stderr


def test_doctor_without_torch_reports_it_missing_and_does_not_import_it(shim: Path) -> None:
    res = glocal_without(shim, "deep", "doctor", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["torch"] == {"installed": False}  # an import attempt would have recorded an error
    assert report["extras"]["deep"]["installed"] is False
    assert report["extras"]["deep"]["install"] == "pip install 'glocal[deep]'"
    deep_methods = [m for m in report["methods"] if "deep" in m["extras"]]
    assert deep_methods and all("deep" in m["missing_extras"] and not m["ready"] for m in deep_methods)
    assert all(m["ready"] for m in report["methods"] if not m["extras"])
    text = glocal_without(shim, "deep", "doctor")
    assert text.returncode == 0 and "GPU: unknown: PyTorch is not installed" in text.stdout
