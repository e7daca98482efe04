"""Where each indexed image came from: ``sources.jsonl`` in an index folder, one ``{"name", "path"}`` line per image.

The index itself only needs image *names*; the source files are needed again to draw a query's matches
(``glocal search --draw``). Lines are appended after each committed batch of features (absolute paths), each append fsync'ed (and the folder, when the file is new);
a later line for the same name wins (an image removed and added again). The log is advisory: a crash
between a feature commit and its log line, or a file moved since, only means that image cannot be drawn.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from glocal.io.atomic import fsync_dir

SOURCES_FILE = "sources.jsonl"


class SourceLog:
    """Append-only name -> source path log of one index folder."""

    def __init__(self, root: str | Path) -> None:
        self.path = Path(root) / SOURCES_FILE
        self._paths: dict[str, Path] | None = None

    def append(self, items: Iterable[tuple[str, str | Path]]) -> None:
        """Record ``(name, source path)`` pairs (paths made absolute), flushed to disk."""
        pairs = [(str(n), Path(p).resolve()) for n, p in items]
        lines = [json.dumps({"name": n, "path": str(p)}, ensure_ascii=False) for n, p in pairs]
        if not lines:
            return
        torn = False
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        new = not self.path.exists()
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(("\n" if torn else "") + "\n".join(lines) + "\n")  # a torn last line stays on its own
            f.flush()
            os.fsync(f.fileno())
        if new:  # the file's entry in the folder is durable too
            fsync_dir(self.path.parent)
        if self._paths is not None:
            self._paths.update(pairs)

    def lookup(self, name: str) -> Path | None:
        """The recorded source of ``name`` (None when unknown); torn or malformed lines are skipped."""
        if self._paths is None:
            self._paths = {}
            if self.path.exists():
                for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                    try:
                        entry = json.loads(line)
                        self._paths[str(entry["name"])] = Path(entry["path"])
                    except (ValueError, KeyError, TypeError):
                        continue
        return self._paths.get(name)
