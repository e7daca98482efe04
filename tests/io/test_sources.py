"""The index's source log: where each image came from, latest line wins, damage tolerated."""
from __future__ import annotations

from pathlib import Path

from glocal.io.sources import SOURCES_FILE, SourceLog


def test_source_log_round_trip_latest_wins_and_torn_tail(tmp_path: Path) -> None:
    log = SourceLog(tmp_path)
    assert log.lookup("a.jpg") is None
    log.append([("a.jpg", tmp_path / "x" / "a.jpg"), ("b é.jpg", Path("rel/b.jpg"))])
    assert log.lookup("a.jpg") == tmp_path / "x" / "a.jpg"
    assert log.lookup("b é.jpg") == Path("rel/b.jpg").resolve()  # stored absolute
    log.append([("a.jpg", tmp_path / "new.jpg")])  # re-added under the same name
    assert log.lookup("a.jpg") == tmp_path / "new.jpg"
    with open(tmp_path / SOURCES_FILE, "a", encoding="utf-8") as f:
        f.write('{"name": "c.jpg", "pa')  # a crash mid-line
    again = SourceLog(tmp_path)
    assert again.lookup("a.jpg") == tmp_path / "new.jpg" and again.lookup("c.jpg") is None
    again.append([("d.jpg", tmp_path / "d.jpg")])  # written on a line of its own, after the torn one
    assert SourceLog(tmp_path).lookup("d.jpg") == tmp_path / "d.jpg"
