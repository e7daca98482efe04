"""glocal index compact: the removed images' bytes are given back; the survivors search exactly as before."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from glocal.cli.main import app
from glocal.errors import BusyIndexError, DamagedIndexError
from glocal.index.builder import add_images, build_index
from glocal.index.collection import Collection
from glocal.index.compact import compact_index
from glocal.search import Searcher


def _results(searcher: Searcher, query: Path) -> list[tuple[str, float, int]]:
    return [(h.name, round(h.score, 6), h.inliers) for h in searcher.search(query, top=50)]


def build(paths, names, out: Path, method: str | None = None, **settings) -> Searcher:
    return Searcher(build_index(paths, names, out, method=method, settings=settings, progress=False).collection)


def writable(path: Path) -> Searcher:
    return Searcher(Collection.open(path, writable=True))


def test_compaction_drops_removed_images_and_keeps_scores(demo_benchmark, tmp_path: Path) -> None:
    paths, names = demo_benchmark.db_paths[:30], demo_benchmark.db_names[:30]
    index = tmp_path / "c.glx"
    eng = build(paths, names, index, codebook_size=256)
    gone = names[2:12]
    assert eng.collection.remove(gone) == []
    queries = [paths[0], paths[15], demo_benchmark.query_paths[0]]
    before = [_results(eng, q) for q in queries]
    eng.close()
    size_before = sum(p.stat().st_size for p in index.rglob("*") if p.is_file())

    report = compact_index(index)
    assert (report.kept, report.dropped, report.bytes_before) == (20, 10, size_before)
    assert report.bytes_after < report.bytes_before
    assert not index.with_name("c.glx.compacting").exists() and not index.with_name("c.glx.old").exists()

    again = writable(index)
    assert len(again) == 20 and again.names == [n for n in names if n not in gone]  # dense, same order
    assert not again.collection.stage.removed().any()
    assert [_results(again, q) for q in queries] == before  # same codebook and quantizer: same scores
    with Searcher.open(index) as reader:
        assert again.settings()["codebook"] == reader.settings()["codebook"]
    # the index still grows, and a removed name can come back
    assert add_images(again.collection, [paths[5]], [names[5]], progress=False) == []
    assert again.search(paths[5], top=1)[0].name == names[5] and len(again) == 21
    again.close()
    assert compact_index(index).dropped == 0  # nothing removed: nothing rewritten


def test_global_index_compaction(demo_benchmark, tmp_path: Path) -> None:
    paths, names = demo_benchmark.db_paths[:8], demo_benchmark.db_names[:8]
    conf = {"max_side": 128, "scales": [1.0]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        eng = build(paths, names, tmp_path / "g.glx", method="dolg", **conf)
        eng.collection.remove([names[1], names[6]])
        before = _results(eng, paths[3])
        eng.close()
        assert compact_index(tmp_path / "g.glx").dropped == 2
        again = Searcher.open(tmp_path / "g.glx")
        after = _results(again, paths[3])
        assert len(again) == 6 and [r[0] for r in after] == [r[0] for r in before]
        assert [r[1] for r in after] == pytest.approx([r[1] for r in before], abs=1e-5)  # BLAS shapes differ
        again.close()


def test_interrupted_swap_is_explained_and_stale_work_is_cleared(demo_benchmark, tmp_path: Path) -> None:
    index = tmp_path / "s.glx"
    eng = build(demo_benchmark.db_paths[:6], demo_benchmark.db_names[:6], index, codebook_size=64)
    eng.collection.remove([demo_benchmark.db_names[0]])
    eng.close()
    stale = tmp_path / "s.glx.compacting"
    stale.mkdir()
    (stale / "junk").write_text("half-written")
    assert compact_index(index).kept == 5 and not stale.exists()
    # a crash between the two renames: the old folder moved away, the new one complete beside it
    os.rename(index, tmp_path / "s.glx.old")
    os.rename(tmp_path / "s.glx.old", stale)
    with pytest.raises(DamagedIndexError, match="interrupted .* rename that to"):
        Collection.open(index)


def test_cli_compact(demo_benchmark, tmp_path: Path) -> None:
    index = tmp_path / "cli.glx"
    build(demo_benchmark.db_paths[:6], demo_benchmark.db_names[:6], index, codebook_size=64).close()
    runner = CliRunner()
    assert runner.invoke(app, ["index", "remove", str(index), demo_benchmark.db_names[2]]).exit_code == 0
    result = runner.invoke(app, ["index", "compact", str(index)])
    assert result.exit_code == 0, result.output
    assert "dropped 1 removed images, kept 5" in result.output
    missing = runner.invoke(app, ["index", "compact", str(tmp_path / "missing.glx")])
    assert missing.exit_code == 3 and "no such index folder" in missing.output


def test_one_writer_at_a_time_for_global_indexes_too(demo_benchmark, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eng = build(demo_benchmark.db_paths[:3], demo_benchmark.db_names[:3], tmp_path / "w.glx",
                    method="dolg", max_side=128, scales=[1.0])
        with pytest.raises(BusyIndexError, match="another process is writing"):
            compact_index(tmp_path / "w.glx")
        reader = Collection.open(tmp_path / "w.glx")  # readers are not blocked
        assert len(reader) == 3
        reader.close()
        eng.close()
        Collection.open(tmp_path / "w.glx", writable=True).close()  # released on close
