"""Fixtures of the service tests: ``hold`` makes the index worker's next search or add slow, or its next start
long, deterministically (the worker's test hook, :data:`glocal.serve.index_work.HOLD_ENV`)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest


class Hold:
    """Drives the worker's test hook through files in ``folder`` (the environment variable must be set before
    the app starts its worker: the worker inherits the environment)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def hold(self) -> None:
        """The next search or add computes, holding the worker's GIL, until :meth:`release`."""
        (self.folder / "entered").unlink(missing_ok=True)
        (self.folder / "hold").touch()

    def entered(self, timeout: float = 30.0) -> bool:
        """Whether a held request reached the worker within ``timeout`` seconds."""
        end = time.monotonic() + timeout
        while not (self.folder / "entered").exists():
            if time.monotonic() > end:
                return False
            time.sleep(0.01)
        return True

    def release(self) -> None:
        (self.folder / "hold").unlink(missing_ok=True)

    def hold_start(self) -> None:
        """The next worker waits before opening the index, until :meth:`release_start`."""
        (self.folder / "hold-start").touch()

    def release_start(self) -> None:
        (self.folder / "hold-start").unlink(missing_ok=True)


@pytest.fixture()
def hold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from glocal.serve.index_work import HOLD_ENV

    folder = tmp_path / "hold"
    folder.mkdir()
    monkeypatch.setenv(HOLD_ENV, str(folder))
    h = Hold(folder)
    yield h
    h.release()
    h.release_start()

