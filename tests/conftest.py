"""Shared fixtures: a generated landmark benchmark and its index, built once per test session."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_benchmark(tmp_path_factory: pytest.TempPathFactory):
    from glocal.demo.synthetic import make_benchmark

    return make_benchmark(tmp_path_factory.mktemp("bench"), seed=0)


@pytest.fixture(scope="session")
def demo_index(demo_benchmark, tmp_path_factory: pytest.TempPathFactory):
    from glocal.engine import Engine

    out = tmp_path_factory.mktemp("idx") / "demo.glx"
    engine = Engine.build(demo_benchmark.db_paths, demo_benchmark.db_names, out, progress=False)
    yield engine
    engine.close()


@pytest.fixture
def photo_path(tmp_path: Path) -> Path:
    """A real photo (scikit-image's astronaut) written as JPEG."""
    from PIL import Image
    from skimage import data

    p = tmp_path / "astronaut.jpg"
    Image.fromarray(data.astronaut()).save(p, quality=92)
    return p
