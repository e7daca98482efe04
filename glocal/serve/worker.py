"""The index worker process as the HTTP process sees it: started, called, timed out, killed and restarted.

All index work (extraction, search, add, remove, look-ups by position) runs in one separate process
(:mod:`glocal.serve.index_work`, started with the ``spawn`` context: a fresh interpreter, never a fork of a
process with PyTorch or OpenCV threads). The HTTP process only parses requests, enforces the limits, queues and
answers, so code in the worker that holds the GIL (numpy, OpenCV or PyTorch sections, Python loops) can no
longer delay ``/health`` or the refusal of the excess.

:class:`IndexWorker` is driven under the service's lock (one request at a time in the worker):

* :meth:`~IndexWorker.call` sends ``(operation, arguments)`` down the pipe and waits for the answer at most
  ``timeout`` seconds. An error answer raises :class:`~glocal.serve.index_work.WorkerError` with its status. A
  worker that overruns is killed (SIGKILL); one that dies during the request (killed, out of memory, a crash in
  native code) is noticed through its process sentinel at once; either way the request gets one
  :class:`WorkerError` (503) saying so, never a hang, and the worker is restarted.
* Restarts: a supervisor thread watches the process. When it ends (during a request or while idle) the state
  becomes ``"restarting"`` and a new process is started under the lock (a request that takes the lock first
  starts it itself), so requests queue behind the restart within ``--lock-timeout`` as behind a search. A
  process that cannot open the index leaves the state ``"failed"`` (with the reason) and is retried every
  :data:`RETRY_SECONDS`.
* :attr:`~IndexWorker.status` (``"starting"``, ``"ready"``, ``"restarting"``, ``"failed"``, ``"stopped"``) and
  :attr:`~IndexWorker.detail` (why it is not ready) are read by the event loop without the lock.
"""
from __future__ import annotations

import multiprocessing as mp
import signal
import threading
import time
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from glocal import errors
from glocal.serve.index_work import WorkerError, worker_main

START_TIMEOUT = 120.0  # seconds for a new worker to import, open the index and say it is ready
RETRY_SECONDS = 5.0  # between attempts to start a worker that could not open the index
_STOP_SECONDS = 5.0  # a worker asked to stop is killed after this long
#: how a request of each operation is named in the answer when its worker stopped during it
_WHAT = {"search": "the search", "add": "adding the image", "remove": "removing the image",
         "lookup": "looking up the image"}
_WRITES = ("add", "remove")


def describe_exit(code: int | None) -> str:
    """``exitcode`` of a process, in words."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class IndexWorker:
    """One index worker process, its pipe and its supervisor (see the module docstring)."""

    def __init__(self, index_path: Path, writable: bool, lock: threading.Lock) -> None:
        self.index_path = Path(index_path)
        self.writable = writable
        self.lock = lock  # held by whoever talks to the process or replaces it
        self.state = "stopped"
        self.detail = ""
        self.restarts = 0
        self.settings: dict = {}
        self.images = 0
        self.startup_error: Exception | None = None
        self._proc: Any = None
        self._conn: Any = None
        self._started = 0
        self._failed_at = 0.0
        self._closing = threading.Event()
        self._supervisor: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """The worker process's id (None before the first start)."""
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        """(at startup) Start the process and wait until it has opened the index; raise the reason it could not
        (the error class of :mod:`glocal.errors` it raised, else ``RuntimeError``)."""
        self.state = "starting"
        with self.lock:
            self._start()
        if self.state != "ready":
            self.state = "stopped"
            raise self.startup_error or RuntimeError(self.detail)
        self._supervisor = threading.Thread(target=self._supervise, name="glocal-index-supervisor", daemon=True)
        self._supervisor.start()

    def _start(self) -> None:
        """(lock held) Replace the process by a fresh one; afterwards the state is ``"ready"`` or ``"failed"``."""
        self.state = "restarting" if self._started else "starting"
        self._stop_process()
        if self._started:
            self.restarts += 1
        self._started += 1
        ctx = mp.get_context("spawn")
        conn, child = ctx.Pipe()
        proc = ctx.Process(target=worker_main, args=(child, str(self.index_path), self.writable),
                           name="glocal-index-worker", daemon=True)
        proc.start()
        child.close()
        self._proc, self._conn = proc, conn
        wait([conn, proc.sentinel], timeout=START_TIMEOUT)
        message = self._receive(conn)
        if message is not None and message[0] == "ready":
            _, self.settings, self.images = message
            self.state, self.detail, self.startup_error = "ready", "", None
            return
        if message is not None and message[0] == "failed":
            _, kind, text = message
            error = getattr(errors, kind, None)
            self.startup_error = error(text) if isinstance(error, type) and issubclass(error, Exception) else None
            self.detail = f"the index worker could not open the index: {text}"
        elif proc.is_alive():
            self.detail = f"the index worker did not open the index within {START_TIMEOUT:g} s"
        else:
            proc.join(1)
            self.detail = f"the index worker stopped while opening the index ({describe_exit(proc.exitcode)})"
        self.startup_error = self.startup_error or RuntimeError(self.detail)
        self._stop_process()
        self.state, self._failed_at = "failed", time.monotonic()

    @staticmethod
    def _receive(conn: Any) -> Any:
        try:
            return conn.recv() if conn.poll() else None
        except (EOFError, OSError):
            return None

    def _stop_process(self, kill: bool = True) -> None:
        """(lock held) Kill the current process (if any) and reap it."""
        proc, conn = self._proc, self._conn
        if proc is not None and kill and proc.is_alive():
            proc.kill()
        if proc is not None:
            proc.join(_STOP_SECONDS)
        if conn is not None:
            conn.close()
        self._conn = None

    def _lost(self, proc: Any, detail: str) -> WorkerError:
        """(lock held) The process overran or died during a request: kill it, hand it to the supervisor."""
        self.state, self.detail = "restarting", detail
        if self._proc is proc:
            self._stop_process()
        return WorkerError(503, detail)

    def call(self, op: str, args: tuple, timeout: float) -> Any:
        """(lock held) ``op(*args)`` in the worker; its result, or :class:`WorkerError` (its error answer, or 503
        when the worker is not running, stopped during the request or overran ``timeout`` seconds)."""
        if self._closing.is_set():
            raise WorkerError(503, "the service is stopping")
        if self.state == "failed" and time.monotonic() - self._failed_at < RETRY_SECONDS:
            raise WorkerError(503, self.detail)
        if self.state != "ready" or self._conn is None or not self._proc.is_alive():
            self._start()  # a death or failure the supervisor has not handled yet
            if self.state != "ready":
                raise WorkerError(503, self.detail)
        proc, conn = self._proc, self._conn
        what = _WHAT.get(op, op)
        unknown = " (whether the change was committed is not known: check before retrying)" if op in _WRITES else ""
        try:
            conn.send((op, args))
        except (OSError, ValueError):
            raise self._lost(proc, f"the index worker stopped before {what} began; it is being restarted, "
                                   "retry") from None
        ready = wait([conn, proc.sentinel], timeout=timeout)
        message = self._receive(conn)
        if message is not None:
            self.images = message[-1]
            if message[0] == "ok":
                return message[1]
            raise WorkerError(message[1], message[2])
        if not ready:
            raise self._lost(proc, f"{what} took longer than the limit of {timeout:g} s: the index worker was "
                                   f"stopped and is being restarted{unknown}")
        proc.join(1)
        raise self._lost(proc, f"the index worker stopped ({describe_exit(proc.exitcode)}) during {what}; it is "
                               f"being restarted{unknown}")

    def _supervise(self) -> None:
        """(own thread) Restart the process whenever it ends; retry a failed start every RETRY_SECONDS."""
        while not self._closing.is_set():
            proc = self._proc
            if self.state == "failed":
                if self._closing.wait(RETRY_SECONDS):
                    return
            elif proc is None or not wait([proc.sentinel], timeout=0.5):
                continue
            with self.lock:
                if self._closing.is_set() or self._proc is not proc:
                    continue  # a request restarted it first
                if self.state == "ready":  # ended while idle (a request that saw it end has said why)
                    proc.join(1)
                    self.detail = f"the index worker stopped ({describe_exit(proc.exitcode)}); it is being restarted"
                self._start()

    @property
    def status(self) -> str:
        """(any thread, no lock) :attr:`state`, or ``"restarting"`` for a process that has ended and whose end
        the supervisor has not handled yet (a ``select`` on its sentinel)."""
        state, proc = self.state, self._proc
        if state == "ready" and proc is not None and wait([proc.sentinel], timeout=0):
            return "restarting"
        return state

    def close(self) -> None:
        """Stop the supervisor, ask the worker to stop (killed after a few seconds), reap it."""
        self._closing.set()
        acquired = self.lock.acquire(timeout=_STOP_SECONDS)
        try:
            proc, conn = self._proc, self._conn
            if conn is not None and proc is not None and proc.is_alive():
                try:
                    conn.send(None)
                except (OSError, ValueError):
                    pass
                proc.join(_STOP_SECONDS)
            self._stop_process()
            self.state = "stopped"
        finally:
            if acquired:
                self.lock.release()
        if self._supervisor is not None:
            self._supervisor.join(_STOP_SECONDS)
