"""Every deep method runs end to end through the engine (random weights, tiny images: plumbing, not accuracy)."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from glocal.engine import Engine  # noqa: E402

TINY = {
    "delg": {"max_side": 128, "scales": [1.0], "global_scales": [1.0], "attention_threshold": 0.0, "max_keypoints": 100},
    "delg-star": {"max_side": 128, "scales": [1.0], "global_scales": [1.0], "attention_threshold": 0.0,
                  "max_keypoints": 100},
    "dolg": {"max_side": 128, "scales": [1.0]},
    "how": {"max_side": 128, "scales": [1.0], "max_keypoints": 100},
    "fire": {"max_side": 128, "scales": [1.0], "max_keypoints": 100, "num_templates": 16, "iterations": 2},
    "vitgal": {"max_side": 128, "scales": [1.0], "max_keypoints": 100, "embed_dim": 48, "depth": 2, "num_heads": 4},
}


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.mark.parametrize("method", list(TINY))
def test_deep_method_builds_reopens_and_searches(method: str, demo_benchmark, tmp_path: Path) -> None:
    paths, names = demo_benchmark.db_paths[:8], demo_benchmark.db_names[:8]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "randomly initialised" warnings are expected here
        engine = Engine.build(paths, names, tmp_path / "x.glx", method=method, progress=False, codebook_size=16,
                              **TINY[method])
        assert len(engine) == 8 and engine.settings["method"] == method
        engine.close()
        again = Engine.open(tmp_path / "x.glx")
        hits = again.search(paths[3], top=8)
    assert len(hits) == 8 and len({h.index for h in hits}) == 8
    # the database copy of the query image is its own best match (identical features, same weights)
    assert hits[0].name == names[3]
    if again.manifest["rerank"]["top"]:
        assert hits[0].inliers > 0
    if again.manifest["shortlist"] == "global":
        # alpha-QE with the query and its best neighbour (itself here) keeps the copy first
        expanded = again.search(paths[3], top=8, rerank_top=0, query_expansion=2)
        assert expanded[0].name == names[3] and len(expanded) == 8
        augmented = again.search(paths[3], top=8, rerank_top=0, database_augmentation=2)
        assert augmented[0].name == names[3] and len(augmented) == 8
    else:
        with pytest.raises(ValueError, match="global descriptors"):
            again.search(paths[3], query_expansion=2)
        with pytest.raises(ValueError, match="global descriptors"):
            again.search(paths[3], database_augmentation=2)
    again.close()
