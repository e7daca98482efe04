"""End-to-end: the default method's pipeline (build -> collection -> searcher) on the generated benchmark."""
from __future__ import annotations

from pathlib import Path

import pytest

from glocal.errors import BadInputError, BadOptionError, DamagedIndexError
from glocal.evaluate.protocol import revisited_setups
from glocal.index.builder import add_images, build_index
from glocal.index.collection import Collection
from glocal.io.images import ImageReadError
from glocal.search import Searcher


def build(paths, names, out: Path, method: str | None = None, codebook_from: Path | None = None, **settings):
    """A searcher over a new index, and the build's failures."""
    result = build_index(paths, names, out, method=method, settings=settings, codebook_from=codebook_from,
                         progress=False)
    return Searcher(result.collection), result.failures


def writable(path: Path) -> Searcher:
    return Searcher(Collection.open(path, writable=True))


def test_queries_find_their_transformed_copies(demo_benchmark, demo_index) -> None:
    """The demo is hard on purpose (tests/test_demo.py): most, not all, positives verify at the top."""
    ranks, shortlist_ranks = [], []
    for qpath, g in zip(demo_benchmark.query_paths, demo_benchmark.gnd):
        query = demo_index.query_features(qpath, box=tuple(g["bbx"]))
        hits = demo_index.search_features(query, top=len(demo_index))
        shortlist_ranks.append([h.index for h in demo_index.search_features(query, top=len(demo_index), rerank_top=0)])
        order = [h.index for h in hits]
        ranks.append(order)
        positives = set(g["easy"]) | set(g["hard"])
        # most easy copies are within the first 5 results, and the best result is a positive
        assert len(set(g["easy"]) & set(order[:5])) >= 2, (qpath.name, order[:10], g)
        assert order[0] in positives | set(g["junk"])
        # verified positives carry real inlier matches in original image coordinates
        top = hits[0]
        assert top.inliers >= 15 and top.matches.shape == (top.inliers, 4)
    res, shortlist = revisited_setups(ranks, demo_benchmark.gnd), revisited_setups(shortlist_ranks, demo_benchmark.gnd)
    # far above random (E / M / H about 0.04 / 0.09 / 0.07), clearly below perfect, and verification is what
    # lifts it there
    assert 0.8 < res["medium"].map < 0.97 and 0.7 < res["hard"].map < 0.95
    assert res["medium"].map > shortlist["medium"].map + 0.05 and res["hard"].map > shortlist["hard"].map + 0.1


def test_shortlist_alone_is_already_useful(demo_benchmark, demo_index) -> None:
    g = demo_benchmark.gnd[0]
    hits = demo_index.search(demo_benchmark.query_paths[0], box=tuple(g["bbx"]), rerank_top=0, top=10)
    assert all(h.inliers == 0 for h in hits)
    assert len(set(h.index for h in hits[:5]) & (set(g["easy"]) | set(g["hard"]))) >= 3


def test_asmk_budget_option_reaches_the_inverted_file(demo_benchmark, demo_index, monkeypatch) -> None:
    from glocal.index.inverted_file import InvertedFile

    seen = []
    real = InvertedFile.search
    monkeypatch.setattr(InvertedFile, "search", lambda self, *a, **kw: seen.append(kw.get("budget")) or real(self, *a, **kw))
    g = demo_benchmark.gnd[0]
    root = demo_index.collection.root
    with Searcher.open(root, settings={"asmk_budget": 0.5}) as approx:
        hits = approx.search(demo_benchmark.query_paths[0], box=tuple(g["bbx"]), rerank_top=0, top=10)
    exact = demo_index.search(demo_benchmark.query_paths[0], box=tuple(g["bbx"]), rerank_top=0, top=10)
    assert seen == [0.5, 1.0] and len(hits) == 10
    assert len({h.index for h in hits} & {h.index for h in exact}) >= 5  # half of the entries: most hits stay
    with pytest.raises((BadOptionError, ValueError), match="asmk_budget"):
        Searcher.open(root, settings={"asmk_budget": 2.0})


def test_reopen_gives_identical_results(demo_benchmark, demo_index) -> None:
    q = demo_benchmark.query_paths[1]
    first = [(h.index, h.inliers) for h in demo_index.search(q, top=20)]
    again = Searcher.open(demo_index.collection.root)
    assert [(h.index, h.inliers) for h in again.search(q, top=20)] == first
    again.close()


def test_add_and_crash_recovery(demo_benchmark, tmp_path: Path) -> None:
    paths, names = demo_benchmark.db_paths, demo_benchmark.db_names
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    eng, failures = build(paths[:40] + [bad], names[:40] + ["corrupt"], tmp_path / "a.glx", codebook_size=256)
    assert len(eng) == 40 and [f.name for f in failures] == ["corrupt"]
    eng.close()
    eng = writable(tmp_path / "a.glx")
    failures = add_images(eng.collection, paths[40:60] + paths[:2], names[40:60] + names[:2], progress=False)
    assert len(eng) == 60
    assert [f.reason for f in failures] == ["already in the index (skipped)"] * 2
    eng.close()
    # simulate a crash after features were committed but before the inverted file committed them:
    # append 5 more images' features only, as a crash between the two commits would leave them
    from glocal.io.feature_file import FeatureFile

    ff = FeatureFile(tmp_path / "a.glx" / "features.glf", writable=True)
    extractor = eng.extractor
    from glocal.extract.batch import extract_one  # noqa: I001

    ff.append([extract_one(extractor, p, n) for p, n in zip(paths[60:65], names[60:65])])
    ff.close()
    reopened = writable(tmp_path / "a.glx")
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
    with pytest.raises(BadInputError, match="already exists"):
        build(demo_benchmark.db_paths[:2], demo_benchmark.db_names[:2], demo_index.collection.root)


def test_settings_record_what_produced_results(demo_index) -> None:
    s = demo_index.settings()
    assert s["method"] == "sift" and s["max_side"] == 1024
    stage = demo_index.collection.stage
    assert s["codebook"]["size"] == stage.codebook.size == s["first_stage"]["codebook_size"]
    assert s["rerank"]["rerank_top"] == 100 and s["first_stage"]["kind"] == "asmk*"
    assert s["extractor"]["max_keypoints"] == 2000 and s["rerank"]["ratio"] == 0.9
    stats = stage.stats()
    assert stats["images"] == len(demo_index) and stats["words_per_image"] > 100


@pytest.mark.parametrize("aggregation, used", [("auto", "r-asmk"), ("regions", "regions")])
def test_rmac_regions_feed_regional_asmk(demo_benchmark, tmp_path: Path, aggregation: str, used: str) -> None:
    """With regions, the default aggregation is R-ASMK (D2R eq. 8-9); ``regions`` stores each region."""
    paths, names = demo_benchmark.db_paths[:24], demo_benchmark.db_names[:24]
    eng, _ = build(paths, names, tmp_path / "r.glx", codebook_size=256, regions="rmac", aggregation=aggregation)
    assert eng.settings()["index"]["regions"] == "rmac"
    assert eng.collection.stage.index.settings.aggregation == used
    target = next(i for i, n in enumerate(names) if not n.startswith("distractor") and "tiny" not in n)
    stored = eng.collection.features[target]
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
    with pytest.raises(BadOptionError, match="unknown key 'regions' for method 'dolg'"):
        build(demo_benchmark.db_paths[:2], demo_benchmark.db_names[:2], tmp_path / "g.glx", method="dolg",
              regions="rmac")
    assert not (tmp_path / "g.glx").exists()


def test_removed_name_can_be_added_again(demo_benchmark, tmp_path: Path) -> None:
    """remove + add under the same name (a replaced photo): the new image is searchable, the old never returns."""
    paths, names = demo_benchmark.db_paths, demo_benchmark.db_names
    eng, _ = build(paths[:20], names[:20], tmp_path / "r.glx", codebook_size=256)
    col = eng.collection
    assert col.remove([names[5]]) == []
    assert len(eng) == 19 and names[5] not in col.live_names().values()
    assert all(h.name != names[5] for h in eng.search(paths[5], top=20))
    # the name is free again: a different photo goes in under it
    assert add_images(col, [paths[30]], [names[5]], progress=False) == []
    assert len(eng) == 20
    live = col.live_names()
    assert list(live.values()).count(names[5]) == 1 and 20 in live  # the new position
    hits = eng.search(paths[30], top=3)
    assert hits[0].index == 20 and hits[0].name == names[5]
    # still refused while it is live; removing it again removes the new one
    refused = add_images(col, [paths[31]], [names[5]], progress=False)
    assert [f.reason for f in refused] == ["already in the index (skipped)"]
    eng.close()
    again = writable(tmp_path / "r.glx")
    assert again.search(paths[30], top=1)[0].index == 20
    assert again.collection.remove([names[5]]) == [] and len(again) == 19
    assert again.collection.remove([names[5]]) == [names[5]]  # nothing live by that name any more
    again.close()


def test_codebook_reused_from_another_index(demo_benchmark, tmp_path: Path) -> None:
    """Train once, build many: the second index takes the first one's codebook (no k-means) and searches."""
    import numpy as np

    paths, names = demo_benchmark.db_paths, demo_benchmark.db_names
    first, _ = build(paths[:15], names[:15], tmp_path / "a.glx", codebook_size=128)
    first.close()
    second, _ = build(paths[15:35], names[15:35], tmp_path / "b.glx", codebook_from=tmp_path / "a.glx")
    a, b = Searcher.open(tmp_path / "a.glx"), second
    np.testing.assert_array_equal(a.collection.stage.codebook.centroids, b.collection.stage.codebook.centroids)
    manifest_a, manifest_b = a.collection.manifest, b.collection.manifest
    assert manifest_b["codebook"]["trained_on"].startswith("reused from")
    assert b.collection.options.index.codebook_size == 128
    assert manifest_b["codebook"]["sample"] == manifest_a["codebook"]["sample"]  # the donor's training record
    assert b.search(paths[20], top=1)[0].name == names[20]
    a.close()
    b.close()
    with pytest.raises(BadOptionError, match="excludes codebook images and a codebook size"):
        build(paths[:2], names[:2], tmp_path / "c.glx", codebook_from=tmp_path / "a.glx", codebook_size=64)
    with pytest.raises(BadOptionError, match="not for an ASMK index of 'how'"):
        build(paths[:2], names[:2], tmp_path / "d.glx", method="how", codebook_from=tmp_path / "a.glx")
    with pytest.raises(DamagedIndexError, match="no such index folder"):
        build(paths[:2], names[:2], tmp_path / "e.glx", codebook_from=tmp_path / "nowhere")
    assert not (tmp_path / "c.glx").exists() and not (tmp_path / "d.glx").exists()
    (tmp_path / "a.glx" / "ivf" / "codebook.gls").write_bytes(b"damaged")
    with pytest.raises(DamagedIndexError, match="cannot reuse its codebook"):
        build(paths[:2], names[:2], tmp_path / "f.glx", codebook_from=tmp_path / "a.glx")


def test_search_time_options_change_search_and_rerank_only(demo_benchmark, demo_index) -> None:
    """``--set`` at search time: re-ranking options apply to this searcher; extractor and index options are
    fixed by the index and refused."""
    q = demo_benchmark.query_paths[0]
    box = tuple(demo_benchmark.gnd[0]["bbx"])
    root = demo_index.collection.root
    default = demo_index.options.rerank.max_hamming
    with Searcher.open(root, settings={"max_hamming": default}) as same, \
            Searcher.open(root, settings={"max_hamming": 16}) as strict:
        loose_hits, strict_hits = same.search(q, box=box, top=5), strict.search(q, box=box, top=5)
        assert strict.options.rerank.max_hamming == 16 and strict.settings()["rerank"]["max_hamming"] == 16
    assert [(h.name, h.inliers) for h in loose_hits] == [(h.name, h.inliers) for h in demo_index.search(q, box=box,
                                                                                                       top=5)]
    assert strict_hits[0].inliers < loose_hits[0].inliers  # a stricter code filter keeps fewer pairs
    with Searcher.open(root, settings={"matcher": "descriptors", "ratio": 0.9}) as loose, \
            Searcher.open(root, settings={"matcher": "descriptors", "ratio": 0.6}) as strict:
        assert strict.search(q, box=box, top=5)[0].inliers < loose.search(q, box=box, top=5)[0].inliers
    for fixed in ({"max_keypoints": 100}, {"codebook_size": 64}):
        with pytest.raises(BadOptionError, match="fixed when the index is built"):
            Searcher.open(root, settings=fixed)
