"""The disk fills up at each write step of ``index remove`` and ``index compact`` (a patched writer: every
file opened for writing, ``os.replace`` / ``os.rename`` / ``os.link`` and ``os.fsync`` under the index's folder
is a step, and step k raises ``OSError(ENOSPC)``; a file opened for writing is created empty first, as a full
disk leaves it). Each gives one named error line (exit 3), and afterwards the index opens with every image it
held and passes ``index verify``."""
from __future__ import annotations

import builtins
import errno
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from glocal.cli.main import app
from glocal.index.collection import Collection

pytestmark = pytest.mark.faults

ENV = {"GLOCAL_PROGRESS": "0"}
IMAGES = 6


def _cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


class DiskFull:
    """Counts the write steps under ``root``; raises ENOSPC at step ``fail_at`` (0-based; None: never)."""

    def __init__(self, root: Path, fail_at: int | None = None) -> None:
        self.root = str(root)
        self.fail_at = fail_at
        self.steps: list[str] = []

    def _step(self, what: str, filename: object = None) -> None:
        self.steps.append(what)
        if len(self.steps) - 1 == self.fail_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    def _ours(self, path: object) -> bool:
        return isinstance(path, (str, os.PathLike)) and os.path.abspath(os.fspath(path)).startswith(self.root)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_open, real_fsync = builtins.open, os.fsync

        def open_(file, mode="r", *args, **kwargs):
            if self._ours(file) and any(c in mode for c in "wax+"):
                if len(self.steps) == self.fail_at and any(c in mode for c in "wx"):
                    real_open(file, mode, *args, **kwargs).close()  # created, nothing written
                self._step(f"open({Path(file).name!r}, {mode!r})", file)
            return real_open(file, mode, *args, **kwargs)

        def fsync(fd):
            self._step("fsync")
            return real_fsync(fd)

        monkeypatch.setattr(builtins, "open", open_)
        monkeypatch.setattr(os, "fsync", fsync)
        for name in ("replace", "rename", "link"):
            real = getattr(os, name)

            def move(src, dst, *args, _real=real, _name=name, **kwargs):
                if self._ours(src) or self._ours(dst):
                    self._step(f"{_name}({Path(src).name!r}, {Path(dst).name!r})", dst)
                return _real(src, dst, *args, **kwargs)

            monkeypatch.setattr(os, name, move)


@pytest.fixture(scope="module")
def with_removals(demo_benchmark, tmp_path_factory) -> Path:
    """An index of 6 images of which 2 are removed (so compaction has work), built once."""
    from glocal.index.builder import build_index

    out = tmp_path_factory.mktemp("disk-full") / "base.glx"
    paths = demo_benchmark.db_paths[:IMAGES]
    collection = build_index(paths, [p.name for p in paths], out, settings={"codebook_size": 16},
                             progress=False, workers=1).collection
    try:
        collection.remove([paths[0].name, paths[1].name])
    finally:
        collection.close()
    return out


def _live(index: Path) -> list[str]:
    with Collection.open(index) as c:
        return sorted(c.live_names().values())


def _steps(command: str, base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> list[str]:
    index = tmp_path / "count" / "x.glx"
    shutil.copytree(base, index)
    probe = DiskFull(index.parent)
    with monkeypatch.context() as m:
        probe.install(m)
        result = _cli("index", command, index, *args)
    assert result.exit_code == 0, result.output
    assert probe.steps, "no write step seen: the injection does not reach the command"
    return probe.steps


def _check_rerun(command: str, removed: bool, again, where: str) -> None:
    """The command run again succeeds. A removal already made finds no such name (exit 1); an add whose
    features were committed before the failure finds the image indexed already (skipped, exit 1)."""
    if command == "remove" and removed:
        assert again.exit_code == 1 and "not in the index" in again.output, f"{where}: {again.output}"
    elif command == "add" and again.exit_code == 1:
        assert "already in the index" in again.output, f"{where}: {again.output}"
    else:
        assert again.exit_code == 0, f"{where}: {again.output}"


@pytest.mark.parametrize("command", ["add", "remove", "compact"])
def test_disk_full_at_each_write_step(command, with_removals, demo_benchmark, tmp_path, monkeypatch):
    before = _live(with_removals)
    target = before[0] if command == "remove" else None
    args = {"add": (str(demo_benchmark.db_paths[IMAGES]),), "remove": (target,), "compact": ()}[command]
    committed: list[bool] = []
    steps = _steps(command, with_removals, tmp_path, monkeypatch, *args)
    after = _live(tmp_path / "count" / "x.glx")
    for k, step in enumerate(steps):
        index = tmp_path / f"step{k}" / "x.glx"
        shutil.copytree(with_removals, index)
        full = DiskFull(index.parent, fail_at=k)
        with monkeypatch.context() as m:
            full.install(m)
            result = _cli("index", command, index, *args)
        where = f"disk full at step {k} ({step}) of {len(steps)}"
        rest = full.steps[k + 1:]  # nothing written after the refusal; at most a rename puts a folder back
        assert all(step.startswith("rename(") for step in rest), f"{where}: the command went on writing: {rest}"
        assert result.exit_code == 3, f"{where}: {result.output}"
        assert "Traceback" not in result.output and "internal error" not in result.output, result.output
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "disk is full" in errors[0] and str(index) in errors[0], f"{where}: {errors}"
        # the index still opens and verifies; it holds what it held, or (the disk refused only the folder's fsync
        # after the commit) the change is made, and the line says which
        made = "the change is made" in errors[0] or "the index is compacted" in errors[0]
        assert _live(index) == (after if made else before), f"{where}: {errors[0]}"
        assert made or "nothing" in errors[0], f"{where}: {errors[0]}"
        verify = _cli("index", "verify", index)
        assert verify.exit_code == 0, f"{where}: {verify.output}"
        committed.append(made)
        # and once there is room again the command succeeds (a removal already made is then a name not found)
        again = _cli("index", command, index, *args)
        _check_rerun(command, made, again, f"{where}, then with room")
        assert _live(index) == after, where
        assert not [p.name for p in index.parent.iterdir() if p.name.startswith("x.glx.")], where
        shutil.rmtree(index.parent)
    assert not all(committed) and committed[-1]  # steps before the commit and after it were both met


# -- kill -9 at the commit points of the same commands ------------------------------------------------------
# the child counts the same write steps as DiskFull and SIGKILLs itself just before step k, then runs the CLI
KILLER = """
import builtins, os, signal, sys
root, kill_at = os.path.abspath(sys.argv[1]), int(sys.argv[2])
count = 0
def ours(path):
    return isinstance(path, (str, os.PathLike)) and os.path.abspath(os.fspath(path)).startswith(root)
def step():
    global count
    if count == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    count += 1
real_open, real_fsync = builtins.open, os.fsync
def open_(file, mode="r", *args, **kwargs):
    if ours(file) and any(c in mode for c in "wax+"):
        step()
    return real_open(file, mode, *args, **kwargs)
def fsync(fd):
    step()
    return real_fsync(fd)
builtins.open, os.fsync = open_, fsync
for name in ("replace", "rename", "link"):
    def move(src, dst, *args, _real=getattr(os, name), **kwargs):
        if ours(src) or ours(dst):
            step()
        return _real(src, dst, *args, **kwargs)
    setattr(os, name, move)
from glocal.cli.main import run
sys.argv = ["glocal"] + sys.argv[3:]
run()
"""


@pytest.mark.parametrize("command", ["add", "remove", "compact"])
def test_kill_9_at_each_commit_point(command, with_removals, demo_benchmark, tmp_path, monkeypatch):
    """Killed just before each rename / replace (the commit points) and the fsync after it, and (add, remove)
    before each file is opened for writing: the index opens at the state before or after the command (or,
    between a compaction's two renames, says which folder to rename back), verifies, and the command then
    succeeds."""
    import signal
    import subprocess
    import sys

    from glocal.errors import DamagedIndexError

    before = _live(with_removals)
    target = before[0] if command == "remove" else None
    args = {"add": (str(demo_benchmark.db_paths[IMAGES]),), "remove": (target,), "compact": ()}[command]
    steps = _steps(command, with_removals, tmp_path, monkeypatch, *args)
    after = _live(tmp_path / "count" / "x.glx")
    assert (after == before) == (command == "compact")
    commits = [k for k, s in enumerate(steps) if s.startswith(("replace(", "rename("))]
    points = {k for c in commits for k in (c, c + 1) if k < len(steps)} | {len(steps) - 1}
    if command != "compact":  # (a compaction writes a whole new folder: its commit is the swap)
        points |= {k for k, s in enumerate(steps) if s.startswith("open(") and "LOCK" not in s}
    env = os.environ | ENV | {"PYTHONPATH": os.pathsep.join(sys.path)}
    states, between = [], 0
    for k in sorted(points):
        index = tmp_path / f"kill{k}" / "x.glx"
        shutil.copytree(with_removals, index)
        proc = subprocess.run([sys.executable, "-c", KILLER, str(index.parent), str(k), "index", command, str(index),
                               *args], env=env, capture_output=True, text=True, timeout=300)
        where = f"killed before step {k} ({steps[k]}) of {len(steps)}"
        assert proc.returncode == -signal.SIGKILL, f"{where}: {proc.stderr[-1000:]}"
        try:
            live = _live(index)
        except DamagedIndexError as exc:  # between the two renames of a compaction: told what to do
            assert command == "compact" and "rename that to" in str(exc), f"{where}: {exc}"
            os.rename(index.with_name("x.glx.compacting"), index)
            between += 1
            live = _live(index)
        assert live in (before, after), where
        states.append(live == after)
        assert _cli("index", "verify", index).exit_code == 0, where
        again = _cli("index", command, index, *args)
        _check_rerun(command, live == after and command == "remove", again, f"{where}, then again")
        assert _live(index) == after, where
        assert not [p.name for p in index.parent.iterdir() if p.name.startswith("x.glx.")], where
        shutil.rmtree(index.parent)
    if command != "compact":  # killed before the commit and after it
        assert any(states) and not all(states), states
    else:  # and a compaction between its two renames
        assert between, points
