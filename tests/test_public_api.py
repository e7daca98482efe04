"""The entry points the README shows from Python work as printed."""
from __future__ import annotations

from pathlib import Path

import pytest

import glocal


def test_readme_python_example(demo_benchmark, tmp_path: Path) -> None:
    from glocal import Searcher, build_index

    paths, names = demo_benchmark.db_paths[:5], demo_benchmark.db_names[:5]
    build_index(paths, names, tmp_path / "my.glx", settings={"ratio": 0.8, "codebook_size": 32},
                progress=False).collection.close()
    with Searcher.open(tmp_path / "my.glx") as searcher:
        hits = searcher.search(paths[2], top=3)
    assert hits[0].name == names[2] and hits[0].inliers > 0
    assert glocal.methods.default_method() in glocal.methods.names()
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        glocal.nope  # noqa: B018
