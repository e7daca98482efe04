"""End-to-end: the default sift pipeline on the generated landmark benchmark."""
from __future__ import annotations

from pathlib import Path

import pytest

from glocal.engine import Engine
from glocal.evaluate.protocol import revisited_setups
from glocal.io.images import ImageReadError


def test_queries_find_their_transformed_copies(demo_benchmark, demo_index) -> None:
    ranks = []
    for qpath, g in zip(demo_benchmark.query_paths, demo_benchmark.gnd):
        hits = demo_index.search(qpath, box=tuple(g["bbx"]), top=len(demo_index))
        order = [h.index for h in hits]
        ranks.append(order)
        positives = set(g["easy"]) | set(g["hard"])
        # every easy copy is within the first 5 results, and the best result is a positive
        assert set(g["easy"]) <= set(order[:5]), (qpath.name, order[:10], g)
        assert order[0] in positives | set(g["junk"])
        # verified positives carry real inlier matches in original image coordinates
        top = hits[0]
        assert top.inliers >= 15 and top.matches.shape == (top.inliers, 4)
    res = revisited_setups(ranks, demo_benchmark.gnd)
    assert res["medium"].map > 0.8
    assert res["hard"].map > 0.6


def test_shortlist_alone_is_already_useful(demo_benchmark, demo_index) -> None:
    g = demo_benchmark.gnd[0]
    hits = demo_index.search(demo_benchmark.query_paths[0], box=tuple(g["bbx"]), rerank_top=0, top=10)
    assert all(h.inliers == 0 for h in hits)
    assert len(set(h.index for h in hits[:5]) & (set(g["easy"]) | set(g["hard"]))) >= 3


def test_reopen_gives_identical_results(demo_benchmark, demo_index) -> None:
    q = demo_benchmark.query_paths[1]
    first = [(h.index, h.inliers) for h in demo_index.search(q, top=20)]
    again = Engine.open(demo_index.root)
    assert [(h.index, h.inliers) for h in again.search(q, top=20)] == first
    again.close()


def test_add_and_crash_recovery(demo_benchmark, tmp_path: Path) -> None:
    paths, names = demo_benchmark.db_paths, demo_benchmark.db_names
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    eng = Engine.build(paths[:40] + [bad], names[:40] + ["corrupt"], tmp_path / "a.glx", progress=False,
                       codebook_size=256)
    assert len(eng) == 40 and [f.name for f in eng.failures] == ["corrupt"]
    eng.close()
    eng = Engine.open(tmp_path / "a.glx", writable=True)
    failures = eng.add(paths[40:60] + paths[:2], names[40:60] + names[:2], progress=False)
    assert len(eng) == 60
    assert [f.reason for f in failures] == ["already in the index (skipped)"] * 2
    eng.close()
    # simulate a crash after features were committed but before the inverted file committed them:
    # append 5 more images' features only, as a crash between the two commits would leave them
    from glocal.io.feature_file import FeatureFile

    ff = FeatureFile(tmp_path / "a.glx" / "features.glf", writable=True)
    extractor = eng.extractor
    from glocal.extract.batch import extract_one

    ff.append([extract_one(extractor, p, n) for p, n in zip(paths[60:65], names[60:65])])
    ff.close()
    reopened = Engine.open(tmp_path / "a.glx", writable=True)
    assert len(reopened) == 65 and reopened.names == names[:65]
    # the repaired images are searchable
    target = names.index(names[63])
    hits = reopened.search(paths[63], top=3)
    assert hits[0].index == target
    reopened.close()


def test_bad_query_raises_named_error(demo_index, tmp_path: Path) -> None:
    p = tmp_path / "q.jpg"
    p.write_text("not an image")
    with pytest.raises(ImageReadError, match="q.jpg"):
        demo_index.search(p)


def test_build_refuses_existing_index(demo_benchmark, demo_index) -> None:
    with pytest.raises(FileExistsError):
        Engine.build(demo_benchmark.db_paths[:2], demo_benchmark.db_names[:2], demo_index.root, progress=False)


def test_settings_record_what_produced_results(demo_index) -> None:
    s = demo_index.settings
    assert s["method"] == "sift" and s["max_side"] == 1024
    assert s["codebook"]["size"] == demo_index.shortlist.codebook.size == s["index"]["codebook_size"]
    assert s["rerank"]["top"] == 100 and s["index"]["kind"] == "asmk*"
    stats = demo_index.shortlist.stats()
    assert stats["images"] == len(demo_index) and stats["words_per_image"] > 100


@pytest.mark.parametrize("aggregation", ["r-asmk", "regions"])
def test_rmac_regions_feed_regional_asmk(demo_benchmark, tmp_path: Path, aggregation: str) -> None:
    paths, names = demo_benchmark.db_paths[:24], demo_benchmark.db_names[:24]
    eng = Engine.build(paths, names, tmp_path / "r.glx", progress=False, codebook_size=256, regions="rmac",
                       aggregation=aggregation)
    assert eng.settings["regions"]["source"] == "rmac"
    assert eng.shortlist.settings["aggregation"] == aggregation
    target = next(i for i, n in enumerate(names) if not n.startswith("distractor") and "tiny" not in n)
    stored = eng.features[target]
    assert stored.regions is not None and len(stored.regions) >= 4  # R-MAC grid, full image not stored
    h, w = stored.image_size
    assert (stored.regions[:, 2] <= w + 1e-3).all() and (stored.regions[:, 3] <= h + 1e-3).all()
    # a query showing one quarter of a database image finds it in the shortlist's top 3 (regional search
    # may put a small, sharply matching region of another image first), and first after verification
    x2, y2 = w / 2, h / 2
    hits = eng.search(paths[target], box=(0, 0, x2, y2), top=3, rerank_top=0)
    assert names[target] in [h.name for h in hits]
    assert eng.search(paths[target], box=(0, 0, x2, y2), top=1)[0].name == names[target]
    eng.close()


def test_regions_refused_for_global_methods(demo_benchmark, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ASMK methods"):
        Engine.build(demo_benchmark.db_paths[:2], demo_benchmark.db_names[:2], tmp_path / "g.glx", method="dolg",
                     progress=False, regions="rmac")


def test_removed_name_can_be_added_again(demo_benchmark, tmp_path: Path) -> None:
    """remove + add under the same name (a replaced photo): the new image is searchable, the old never returns."""
    paths, names = demo_benchmark.db_paths, demo_benchmark.db_names
    eng = Engine.build(paths[:20], names[:20], tmp_path / "r.glx", progress=False, codebook_size=256)
    assert eng.remove([names[5]]) == []
    assert len(eng) == 19 and names[5] not in eng.live_names().values()
    assert all(h.name != names[5] for h in eng.search(paths[5], top=20))
    # the name is free again: a different photo goes in under it
    assert eng.add([paths[30]], [names[5]], progress=False) == []
    assert len(eng) == 20
    live = eng.live_names()
    assert list(live.values()).count(names[5]) == 1 and 20 in live  # the new position
    hits = eng.search(paths[30], top=3)
    assert hits[0].index == 20 and hits[0].name == names[5]
    # still refused while it is live; removing it again removes the new one
    assert [f.reason for f in eng.add([paths[31]], [names[5]], progress=False)] == ["already in the index (skipped)"]
    eng.close()
    again = Engine.open(tmp_path / "r.glx", writable=True)
    assert again.search(paths[30], top=1)[0].index == 20
    assert again.remove([names[5]]) == [] and len(again) == 19
    assert again.remove([names[5]]) == [names[5]]  # nothing live by that name any more
    again.close()


def test_codebook_reused_from_another_index(demo_benchmark, tmp_path: Path) -> None:
    """Train once, build many: the second index takes the first one's codebook (no k-means) and searches."""
    import numpy as np

    paths, names = demo_benchmark.db_paths, demo_benchmark.db_names
    first = Engine.build(paths[:15], names[:15], tmp_path / "a.glx", progress=False, codebook_size=128)
    first.close()
    second = Engine.build(paths[15:35], names[15:35], tmp_path / "b.glx", progress=False, codebook_from=tmp_path / "a.glx")
    a, b = Engine.open(tmp_path / "a.glx"), second
    np.testing.assert_array_equal(a.shortlist.codebook.centroids, b.shortlist.codebook.centroids)
    assert b.manifest["codebook"]["trained_on"].startswith("reused from") and b.manifest["asmk"]["codebook_size"] == 128
    assert b.manifest["codebook"]["sample"] == a.manifest["codebook"]["sample"]  # the donor's training record
    assert b.search(paths[20], top=1)[0].name == names[20]
    a.close()
    b.close()
    with pytest.raises(ValueError, match="excludes codebook images and a codebook size"):
        Engine.build(paths[:2], names[:2], tmp_path / "c.glx", progress=False, codebook_from=tmp_path / "a.glx",
                     codebook_size=64)
    with pytest.raises(ValueError, match="not for an ASMK index of 'how'"):
        Engine.build(paths[:2], names[:2], tmp_path / "d.glx", method="how", progress=False,
                     codebook_from=tmp_path / "a.glx")
    with pytest.raises(ValueError, match="not a readable glocal index"):
        Engine.build(paths[:2], names[:2], tmp_path / "e.glx", progress=False, codebook_from=tmp_path / "nowhere")
    assert not (tmp_path / "c.glx").exists() and not (tmp_path / "d.glx").exists()
    (tmp_path / "a.glx" / "ivf" / "codebook.gls").write_bytes(b"damaged")
    with pytest.raises(ValueError, match="cannot reuse its codebook"):
        Engine.build(paths[:2], names[:2], tmp_path / "f.glx", progress=False, codebook_from=tmp_path / "a.glx")
