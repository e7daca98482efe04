"""Compaction against a concurrent writer: no ``add`` or ``remove`` is lost in the folder swap, a writer is
either done or told the index is busy, and the index always opens afterwards."""
from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from pathlib import Path

import pytest

import glocal.index.compact as compact_module
from glocal.errors import BusyIndexError
from glocal.index.builder import build_index
from glocal.index.collection import Collection
from glocal.index.compact import compact_index

pytestmark = pytest.mark.faults

REPETITIONS = 20


@pytest.fixture(scope="module")
def template(demo_benchmark, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("race") / "t.glx"
    paths, names = demo_benchmark.db_paths[:8], demo_benchmark.db_names[:8]
    build_index(paths, names, out, settings={"codebook_size": 16}, progress=False).collection.close()
    return out


class _SlowRenames:
    """``os`` for the compaction module, with a pause before each rename: widens the swap window."""

    def __getattr__(self, name: str):
        import os

        return getattr(os, name)

    @staticmethod
    def rename(src, dst) -> None:
        import os

        time.sleep(0.004)
        os.rename(src, dst)


def _writer(index: Path, donor, stop: threading.Event, added: list[str], removed: list[str],
            outcomes: list[str], wid: int) -> None:
    k = 0
    while not stop.is_set():
        k += 1
        try:
            collection = Collection.open(index, writable=True)
        except BusyIndexError:
            outcomes.append("busy")
            time.sleep(0.0005)
            continue
        except Exception as exc:  # noqa: BLE001 - the test reports anything else
            outcomes.append(f"error: {exc!r}")
            continue
        try:
            name = f"w{wid}-{k}"
            collection.append([dataclasses.replace(donor, name=name)])
            collection.index_pending()
            added.append(name)
            victims = [n for n in collection.live_names().values() if n.startswith("w") and n not in removed]
            if k % 3 == 0 and victims:
                assert collection.remove([victims[0]]) == []
                removed.append(victims[0])
            outcomes.append("ok")
        except Exception as exc:  # noqa: BLE001
            outcomes.append(f"error: {exc!r}")
        finally:
            collection.close()
        time.sleep(0.002)  # leave the compaction a chance to take the lock


def test_compaction_never_loses_a_concurrent_add_or_remove(template: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(compact_module, "os", _SlowRenames())
    with Collection.open(template) as c:
        donor = c.features[0]
        original = list(c.names)
    ok = busy = 0
    for rep in range(REPETITIONS):
        index = tmp_path / f"r{rep}.glx"
        shutil.copytree(template, index)
        with Collection.open(index, writable=True) as c:
            c.remove(original[rep % 3: rep % 3 + 2])  # something for the compaction to drop
        stop = threading.Event()
        added: list[str] = []
        removed: list[str] = []
        outcomes: list[str] = []
        thread = threading.Thread(target=_writer, args=(index, donor, stop, added, removed, outcomes, rep))
        thread.start()
        try:
            time.sleep(0.002 * (rep % 5))  # start the compaction at various points of the writer's loop
            for _ in range(200):  # a compaction, too, is turned away while the writer holds the lock
                try:
                    assert compact_index(index).dropped >= 2
                    break
                except BusyIndexError:
                    time.sleep(0.001)
            else:
                pytest.fail("the compaction never got the writer lock")
            time.sleep(0.01)
        finally:
            stop.set()
            thread.join(timeout=30)
        assert not thread.is_alive()
        assert [o for o in outcomes if o.startswith("error")] == []
        ok += outcomes.count("ok")
        busy += outcomes.count("busy")
        with Collection.open(index) as c:  # the index always opens, with every reported add and remove
            live = set(c.live_names().values())
            assert set(added) - set(removed) <= live, f"repetition {rep}: adds lost"
            assert not set(removed) & live, f"repetition {rep}: removes lost"
        assert not index.with_name(index.name + ".compacting").exists()
        assert not index.with_name(index.name + ".old").exists()
        shutil.rmtree(index)
    assert ok > 0 and busy > 0  # the race did happen: writers both got in and were turned away


def test_a_writer_that_sees_the_folder_vanish_between_two_looks_is_told_busy(template: Path, tmp_path: Path,
                                                                              monkeypatch) -> None:
    """The window the race test hit once: the folder is there at the first look and renamed away (a compaction's
    first rename, its result still locked) before the look for its manifest. The writer must answer busy (or
    open the swapped-in index), never "a compaction was interrupted"."""
    import glocal.index.writer_lock as wl
    from glocal.index.writer_lock import IndexWriterLock

    index = tmp_path / "x.glx"
    shutil.copytree(template, index)
    fresh = index.with_name(index.name + ".compacting")
    real_exists = Path.exists
    swapped = []

    def exists(self: Path) -> bool:
        if self == index / "manifest.json" and not swapped:  # swap just before this look
            shutil.copytree(index, fresh)
            index.rename(index.with_name(index.name + ".old"))
            swapped.append(wl.IndexWriterLock.take_new(fresh))  # the compaction holds its result
        return real_exists(self)

    monkeypatch.setattr(Path, "exists", exists)
    with pytest.raises(BusyIndexError):
        IndexWriterLock.take(index)
    swapped[0].release()
