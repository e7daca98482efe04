"""A real ``kill -9`` of ``glocal index build`` at each of its steps: the process dies by SIGKILL at that exact
point (a child Python that wraps one builder step and kills itself there), then a rebuild and an ``index add``
from another process work, and nothing is left behind that blocks them."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from glocal.index.builder import BUILDING_SUFFIX, add_images, build_index
from glocal.index.collection import Collection
from glocal.index.verify import verify_index

pytestmark = pytest.mark.faults

IMAGES = 6

# the child: runs `glocal index build`, with one builder step wrapped so the process SIGKILLs itself right there
CHILD = textwrap.dedent("""
    import os, signal, sys
    import glocal.index.builder as b

    point = sys.argv[1]

    def die():
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def after(obj, attr, when=lambda *a, **k: True):
        real = getattr(obj, attr)
        def wrapped(*a, **k):
            out = real(*a, **k)
            if when(*a, **k):
                die()
            return out
        setattr(obj, attr, wrapped)

    def before(obj, attr):
        def wrapped(*a, **k):
            die()
        setattr(obj, attr, wrapped)

    if point == "first-batch-appended":
        after(b.FeatureFile, "append")
    elif point == "features-extracted":
        after(b, "_extract_database")
    elif point == "first-stage-written":
        after(b, "_create_asmk_stage")
    elif point == "manifest-written":
        after(b, "write_manifest")
    elif point == "before-rename":
        before(b, "fsync_dir")  # the first fsync: of the finished work folder, just before the rename
    elif point == "after-rename":
        after(b.os, "rename", when=lambda src, dst, *a, **k: b.BUILDING_SUFFIX in str(src))
    else:
        raise SystemExit("unknown point " + point)
    from glocal.cli.main import run
    sys.argv = ["glocal"] + sys.argv[2:]
    run()
""")

POINTS = ["first-batch-appended", "features-extracted", "first-stage-written", "manifest-written", "before-rename",
          "after-rename"]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if BUILDING_SUFFIX in p.name)


@pytest.mark.parametrize("point", POINTS)
def test_kill_9_during_build_then_rebuild_and_add_work(point, demo_benchmark, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for p in demo_benchmark.db_paths[:IMAGES]:
        (images / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "demo.glx"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = os.environ | {"GLOCAL_PROGRESS": "0", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, str(script), point, "index", "build", str(images), "--out", str(out),
                           "--codebook-size", "16", "--workers", "1"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]

    if point == "after-rename":  # killed after the commit: the index is complete and sound
        assert out.is_dir() and _leftovers(tmp_path) == []
        report = verify_index(out)
        assert report.ok, report.summary()
        collection = Collection.open(out, writable=True, progress=False)
    else:  # killed before the commit: no index, only the dead build's folder
        assert not out.exists()
        assert len(_leftovers(tmp_path)) == 1 and _leftovers(tmp_path)[0].startswith(f"demo.glx{BUILDING_SUFFIX}")
        result = build_index(sorted(images.iterdir()), [p.name for p in sorted(images.iterdir())], out,
                             settings={"codebook_size": 16}, progress=False, workers=1)
        assert result.failures == []
        collection = result.collection
        assert _leftovers(tmp_path) == []  # the dead build's folder was removed by the rebuild
    try:
        assert len(collection) == IMAGES
        extra = demo_benchmark.db_paths[IMAGES]
        assert add_images(collection, [extra], ["extra.jpg"], progress=False, workers=1) == []
        assert len(collection) == IMAGES + 1
    finally:
        collection.close()
    report = verify_index(out)
    assert report.ok, report.summary()
    assert _leftovers(tmp_path) == []
