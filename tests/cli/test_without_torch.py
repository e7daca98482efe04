"""Reading and editing an index never needs the model: ``index info``, ``remove`` and ``compact`` on a deep
method's index run with PyTorch imports blocked."""
from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None
sys.meta_path.insert(0, _NoTorch())
from glocal.cli.main import run
sys.argv = ["glocal"] + sys.argv[1:]
run()
"""


def _glocal_without_torch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH, *args], capture_output=True, text=True, timeout=300,
                          env={"GLOCAL_PROGRESS": "0", "PATH": "/usr/bin:/bin"})


def test_index_info_remove_compact_of_a_deep_index_without_torch(demo_benchmark, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from glocal.index.builder import build_index

    index = tmp_path / "deep.glx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        build_index(demo_benchmark.db_paths[:4], demo_benchmark.db_names[:4], index, method="dolg",
                    settings={"max_side": 96, "scales": [1.0]}, progress=False).collection.close()
    info = _glocal_without_torch("index", "info", str(index), "--json")
    assert info.returncode == 0, info.stderr
    assert '"images": 4' in info.stdout
    removed = _glocal_without_torch("index", "remove", str(index), demo_benchmark.db_names[1])
    assert removed.returncode == 0, removed.stderr
    compacted = _glocal_without_torch("index", "compact", str(index))
    assert compacted.returncode == 0, compacted.stderr
    assert "kept 3" in compacted.stdout
    # the first command that needs pixels says which extra to install, in one line
    searched = _glocal_without_torch("search", str(index), str(demo_benchmark.db_paths[0]))
    assert searched.returncode == 4 and "pip install 'glocal[deep]'" in searched.stderr
    assert "Traceback" not in searched.stderr and len(searched.stderr.strip().splitlines()) == 1
    # adding images needs the model too: the same one line, and the index is left as it was
    added = _glocal_without_torch("index", "add", str(index), str(demo_benchmark.db_paths[5]))
    assert added.returncode == 4 and "pip install 'glocal[deep]'" in added.stderr, added.stderr
    assert len(added.stderr.strip().splitlines()) == 1
    assert '"images": 3' in _glocal_without_torch("index", "info", str(index), "--json").stdout
    # evaluating with that index says so before reading the dataset
    data = tmp_path / "mine"
    data.mkdir()
    for p in demo_benchmark.db_paths[:2]:
        shutil.copy(p, data / p.name)
    (data / "labels.csv").write_text("file,label\n" + "".join(f"{p.name},x\n" for p in demo_benchmark.db_paths[:2]))
    evaluated = _glocal_without_torch("eval", "custom", "--data", str(data), "--index", str(index))
    assert evaluated.returncode == 4 and "pip install 'glocal[deep]'" in evaluated.stderr, evaluated.stderr
    assert len(evaluated.stderr.strip().splitlines()) == 1
