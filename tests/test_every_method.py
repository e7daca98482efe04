"""Every registered method builds, grows, searches, removes and reopens an index (tiny images; the deep
methods with random weights: plumbing, not accuracy). Parametrised over the registry, so a new method is
tested as soon as its spec file exists."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from glocal import methods
from glocal.errors import BadOptionError
from glocal.index.builder import add_images, build_index
from glocal.index.collection import Collection
from glocal.methods.spec import EXTRA_MODULES
from glocal.search import Searcher

#: settings that make each method small and fast; a method missing here runs with its defaults plus a
#: small codebook (fine for weight-free methods)
TINY = {
    "delg": {"max_side": 128, "scales": [1.0], "global_scales": [1.0], "attention_threshold": 0.0, "max_keypoints": 100},
    "delg-star": {"max_side": 128, "scales": [1.0], "global_scales": [1.0], "attention_threshold": 0.0,
                  "max_keypoints": 100},
    "dolg": {"max_side": 128, "scales": [1.0]},
    "how": {"max_side": 128, "scales": [1.0], "max_keypoints": 100},
    "fire": {"max_side": 128, "scales": [1.0], "max_keypoints": 100, "num_templates": 16, "iterations": 2},
    "vitgal": {"max_side": 128, "scales": [1.0], "max_keypoints": 100, "embed_dim": 48, "depth": 2, "num_heads": 4},
    "gem": {"max_side": 96, "scales": [1.0], "backbone": "efficientnet-lite0"},
    "aliked": {"max_side": 128, "random_weights": True, "score_threshold": 0.0, "max_keypoints": 200},
    "xfeat": {"max_side": 128, "random_weights": True, "detection_threshold": 0.0, "max_keypoints": 200},
    "gem-aliked": {"max_side": 128, "local_max_side": 128, "backbone": "efficientnet-lite0", "random_weights": True,
                   "score_threshold": 0.0, "max_keypoints": 200},
}


def _settings(spec) -> dict:
    out = dict(TINY.get(spec.name, {}))
    if spec.first_stage == "asmk":
        out["codebook_size"] = 16
    return out


@pytest.fixture
def installed(request):
    spec = methods.get(request.param)
    if "deep" in spec.extras:
        pytest.importorskip("torch")
    for module in EXTRA_MODULES["pretrained"] if "pretrained" in spec.extras else ():
        pytest.importorskip(module)
        request.getfixturevalue("torch_one_thread")
    return spec


@pytest.mark.parametrize("installed", methods.names(), indirect=True)
def test_method_builds_adds_searches_removes_reopens(installed, demo_benchmark, tmp_path: Path) -> None:
    spec = installed
    paths, names = demo_benchmark.db_paths[:10], demo_benchmark.db_names[:10]
    index = tmp_path / "x.glx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "randomly initialised" warnings are expected here
        built = build_index(paths[:8], names[:8], index, method=spec.name, settings=_settings(spec), progress=False)
        collection = built.collection
        assert len(collection) == 8 and collection.manifest["method"] == spec.name
        searcher = Searcher(collection)
        assert add_images(collection, paths[8:], names[8:], progress=False,
                          extractor=searcher.database_extractor) == []
        assert len(collection) == 10
        assert collection.remove([names[1], "no-such-image"]) == ["no-such-image"]
        searcher.close()
        again = Searcher.open(index)
        assert again.collection.options == collection.options  # typed options survive the manifest
        q = 6  # a photo of a landmark (not a mirror image or a texture: random weights tie on those)
        hits = again.search(paths[q], top=10)
        assert len(hits) == 9 and names[1] not in {h.name for h in hits}
        # the database copy of the query image is among its best matches (same weights; with random weights,
        # tiny settings and multiple assignment on the query side, a texture can come close or ahead)
        assert names[q] in [h.name for h in hits[:3]], [(h.name, h.score) for h in hits]
        mine = next(h for h in hits if h.name == names[q])
        if again.collection.options.rerank.rerank_top:
            assert mine.inliers > 0
        if spec.first_stage == "global":
            # alpha-QE with the query and its best neighbour (itself here) keeps the copy first
            assert names[q] in [h.name for h in again.search(paths[q], top=8, rerank_top=0, qe=2)[:3]]
            assert names[q] in [h.name for h in again.search(paths[q], top=8, rerank_top=0, dba=2)[:3]]
        else:
            with pytest.raises(BadOptionError, match="global"):
                again.search(paths[q], qe=2)
        again.close()


@pytest.mark.parametrize("name", methods.names())
def test_every_spec_is_complete(name: str) -> None:
    spec = methods.get(name)
    assert spec.summary and spec.paper
    assert spec.first_stage in ("asmk", "global")
    infos = spec.describe()
    assert {i.group for i in infos} >= {"extractor", "index", "search", "rerank"}
    assert all(i.help for i in infos), [i.name for i in infos if not i.help]
    assert spec.configure({}) == spec.defaults
    # in this registry the deep methods need weights, unless an extra ships them all (gem: "pretrained"; gem-aliked
    # also needs ALIKED's published weights)
    assert spec.needs_weights == (bool(spec.extras) and ("pretrained" not in spec.extras or bool(spec.weights)))


def test_exactly_one_default_and_it_needs_nothing() -> None:
    defaults = [s for s in methods.all_specs() if s.default]
    assert len(defaults) == 1 and not defaults[0].extras and not defaults[0].needs_weights
    assert methods.names()[0] == defaults[0].name == methods.default_method()


def test_reading_a_collection_never_needs_the_model(demo_index) -> None:
    """Opening a collection and its searcher creates no extractor until pixels must become features."""
    searcher = Searcher.open(demo_index.collection.root)
    assert searcher._extractor is None and len(searcher) == len(demo_index)
    searcher.close()
    with Collection.open(demo_index.collection.root) as collection:
        assert collection.info()["images"] == len(demo_index)
