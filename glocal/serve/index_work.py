"""What runs inside the service's index worker process (:mod:`glocal.serve.worker` starts and supervises it).

The worker owns the opened index (a :class:`~glocal.search.Searcher` over its
:class:`~glocal.index.collection.Collection`) and does all index work: extraction, search, adding and removing
images, looking up an image by position. The HTTP process never opens the index; it sends one request at a
time down a pipe as ``(operation, arguments)`` (plain values: paths of uploads already saved to temporary
files, names, numbers) and gets back ``("ok", result, images)`` or ``("error", status, detail, images)``, where
``result`` is plain data (dicts, lists, numbers, strings) and ``images`` the index's image count after the
operation. Nothing here imports FastAPI.

* Warm-up: before it says it is ready, the worker searches a small generated picture once
  (:meth:`IndexState.warm_up`), so a new worker's first request is as quick as the others.
* Priority: the worker lowers the CPU priority of all its threads by :data:`WORKER_NICENESS` first (Linux: later
  threads inherit it: OpenCV's, the scan's, PyTorch's), so the HTTP process gets a core first.
* Freshness: a read-only worker compares :func:`~glocal.serve.freshness.index_fingerprint` before each
  operation and reopens the index when another process added, removed or compacted (keeping the loaded model);
  if reopening fails (e.g. mid-swap of a compaction) the open searcher stays and the next operation tries again.
* Signals: the worker ignores SIGINT (Ctrl-C in the terminal reaches the whole process group; the HTTP process
  stops it) and exits when its pipe closes (the HTTP process is gone).
* Test hook: when the environment variable :data:`HOLD_ENV` names a folder, the worker waits while
  ``<folder>/hold-start`` exists before opening the index, and a search or add that starts while
  ``<folder>/hold`` exists touches ``<folder>/entered`` and then computes until ``hold`` is removed, holding the
  GIL in C calls of 0.1-0.3 s as some numpy or OpenCV sections do (a thread doing this delays every other thread
  of its process as long). The tests use it to make a request slow, or a restart long, deterministically; unset,
  it costs one environment look-up per request.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from glocal.errors import GlocalError
from glocal.serve.freshness import index_fingerprint, keep_upload

WORKER_NICENESS = 10  # added to the niceness of the index worker process
HOLD_ENV = "GLOCAL_SERVE_TEST_HOLD"


class WorkerError(Exception):
    """An answer other than success: the HTTP status and the one-line ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def lower_priority() -> None:
    """Lower the CPU priority of every thread of this process by :data:`WORKER_NICENESS` (Linux: the niceness
    belongs to each thread, and threads started later inherit their creator's; the threads a library started at
    import, such as OpenBLAS's pool, are lowered too). Not allowed or not Linux: nothing changes."""
    if sys.platform != "linux" or WORKER_NICENESS <= 0:
        return
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [threading.get_native_id()]
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + WORKER_NICENESS))
        except OSError:
            pass


def json_safe(obj: Any) -> Any:
    """A JSON round trip: numpy scalars / arrays become numbers / lists, anything else its string."""
    def default(o: Any) -> Any:
        if hasattr(o, "tolist"):
            return o.tolist()
        return str(o)

    return json.loads(json.dumps(obj, default=default))


def _hold(name: str) -> None:
    """The test hook (module docstring): wait while ``<$GLOCAL_SERVE_TEST_HOLD>/<name>`` exists."""
    folder = os.environ.get(HOLD_ENV)
    if not folder or not (Path(folder) / name).exists():
        return
    if name == "hold":
        (Path(folder) / "entered").touch()
    while (Path(folder) / name).exists():
        if name == "hold":
            sum(range(10_000_000))  # one C call (0.1-0.3 s): the GIL is held throughout, as in a numpy section
        else:
            time.sleep(0.01)


class IndexState:
    """(in the worker) The opened index and the operations on it."""

    def __init__(self, index_path: Path, writable: bool) -> None:
        self.index_path = Path(index_path)
        self.writable = writable
        self.fingerprint: tuple | None = None  # of the folder the open searcher reads (read-only workers)
        self.searcher = self._open()

    def _open(self) -> Any:
        from glocal.index.collection import Collection
        from glocal.search import Searcher

        if not self.writable:  # taken before opening: a change made meanwhile is seen by the next operation
            self.fingerprint = index_fingerprint(self.index_path)
        return Searcher(Collection.open(self.index_path, writable=self.writable))

    @property
    def images(self) -> int:
        return len(self.searcher)

    def settings(self) -> dict:
        return json_safe(self.searcher.settings())

    def warm_up(self) -> None:
        """One search with a small generated picture (blocks of noise: corners for local features) before the
        worker says it is ready, so that creating the extractor (loading a network) and loading the compiled scan
        are neither paid by the first request nor counted against its time limit. Any failure is ignored: the
        request that meets it reports it."""
        import numpy as np
        from PIL import Image

        fd, tmp = tempfile.mkstemp(prefix="glocal-warm-up-", suffix=".png")
        os.close(fd)
        try:
            blocks = (np.random.default_rng(0).random((24, 32)) * 255).astype(np.uint8)
            Image.fromarray(blocks).resize((512, 384), Image.Resampling.NEAREST).save(tmp)
            self.searcher.search(Path(tmp), top=1)
        except Exception:  # noqa: BLE001, S110 - best effort (see the docstring)
            pass
        finally:
            os.unlink(tmp)

    def refresh(self) -> None:
        """(read-only) Reopen the index when another process changed it on disk."""
        if self.writable or index_fingerprint(self.index_path) == self.fingerprint:
            return
        try:
            fresh = self._open()
        except (GlocalError, OSError):
            self.fingerprint = None
            return
        fresh._extractor = self.searcher._extractor  # same method and options: keep the loaded model
        old, self.searcher = self.searcher, fresh
        old.close()

    def run(self, op: str, args: tuple) -> Any:
        operation = {"search": self.search, "add": self.add, "remove": self.remove, "lookup": self.lookup}.get(op)
        if operation is None:
            raise WorkerError(500, f"the index worker has no operation {op!r}")
        self.refresh()
        return operation(*args)

    def search(self, path: str, label: str, box: tuple | None, top: int, rerank: int | None, qe: int | None,
               dba: int | None, matches: bool) -> dict:
        from glocal.io.images import ImageReadError

        _hold("hold")
        t0 = time.perf_counter()
        try:
            hits = self.searcher.search(Path(path), box=box, top=top, rerank_top=rerank, qe=qe, dba=dba)
        except ImageReadError as exc:
            raise WorkerError(400, f"{label}: {exc.reason}") from None
        except ValueError as exc:
            raise WorkerError(400, str(exc)) from None
        ms = (time.perf_counter() - t0) * 1000
        return {"results": [h.to_dict(with_matches=matches) for h in hits], "ms": round(ms, 2)}

    def add(self, path: str, label: str, filename: str | None, name: str) -> int:
        """Index the upload at ``path`` as ``name``; its position. The upload is kept as its source first."""
        from glocal.index.builder import add_images

        _hold("hold")
        collection = self.searcher.collection
        if name in set(collection.live_names().values()):
            raise WorkerError(409, f"an image named {name!r} is already in the index (DELETE it first to replace it)")
        kept, created = keep_upload(collection.root, Path(path), filename)  # its source, for drawing matches
        failures = add_images(collection, [kept], [name], progress=False, workers=1,
                              extractor=self.searcher.database_extractor)
        if failures:
            if created:
                kept.unlink(missing_ok=True)
            raise WorkerError(400, f"{label}: {failures[0].reason}")
        return len(collection.names) - 1

    def remove(self, name: str) -> None:
        if self.searcher.collection.remove([name]):
            raise WorkerError(404, f"no image named {name!r} in the index")

    def lookup(self, index: int) -> tuple[str, str | None]:
        """(name, source file or None) of the image at position ``index``; 404 naming the reason."""
        collection = self.searcher.collection
        names = collection.names
        if not 0 <= index < len(names):
            raise WorkerError(404, f"no image number {index} in the index (positions 0 to {len(names) - 1})")
        dead = collection.stage.removed()
        if index < len(dead) and dead[index]:
            raise WorkerError(404, f"image number {index} ({names[index]!r}) was removed from the index")
        source = collection.sources.lookup(names[index])
        return names[index], None if source is None else str(source)

    def close(self) -> None:
        self.searcher.close()


def worker_main(conn: Any, index_path: str, writable: bool) -> None:
    """The worker process: open the index, say ``("ready", settings, images)`` (or ``("failed", error class
    name, message)``), then answer one request at a time until the pipe closes or ``None`` arrives."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    lower_priority()  # every thread now, and the threads started later inherit it
    _hold("hold-start")
    try:
        state = IndexState(Path(index_path), writable)
        state.warm_up()
        conn.send(("ready", state.settings(), state.images))
    except Exception as exc:  # noqa: BLE001 - reported to the HTTP process, which says why it cannot serve
        conn.send(("failed", type(exc).__name__, str(exc)))
        return
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the HTTP process is gone
                break
            if message is None:
                break
            op, args = message
            try:
                conn.send(("ok", state.run(op, args), state.images))
            except WorkerError as exc:
                conn.send(("error", exc.status, exc.detail, state.images))
            except Exception as exc:  # noqa: BLE001 - a bug or an I/O failure: one clear 500, the worker goes on
                conn.send(("error", 500, f"the index worker failed: {type(exc).__name__}: {exc}", state.images))
    finally:
        state.close()
