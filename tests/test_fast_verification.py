"""The default ``sift`` end to end with fast verification: settable options reach the extractor and the
matchers, the verified yes/no decision, the stored words (verify, fallback), and the codebook-size note."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

import glocal.search as search_module
from glocal.cli.main import app
from glocal.index.builder import build_index
from glocal.index.verify import repair_index, verify_index
from glocal.io.images import load_image
from glocal.models.sift import RootSiftExtractor
from glocal.rerank.matching import match_descriptors
from glocal.search import Searcher

runner = CliRunner()


def test_sift_orientations_turn_with_the_image(photo_path: Path, tmp_path: Path) -> None:
    img = cv2.imread(str(photo_path))
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 30, 1.0)
    cv2.imwrite(str(tmp_path / "rot.png"), cv2.warpAffine(img, m, (w, h)))
    ex = RootSiftExtractor()
    a = ex.extract(load_image(photo_path, max_side=1024), "a")
    b = ex.extract(load_image(tmp_path / "rot.png", max_side=1024), "b")
    pairs = match_descriptors(a.descriptors, b.descriptors, ratio=0.8, mutual=True)
    turn = np.angle(np.exp(1j * (b.orientations[pairs[:, 1]] - a.orientations[pairs[:, 0]])))
    geometric = np.arctan2(m[1, 0], m[0, 0])  # the rotation of the points, image axes
    assert len(pairs) > 100
    assert abs(np.median(turn) - geometric) < np.deg2rad(2)


@pytest.fixture(scope="module")
def small_index(demo_benchmark, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fv") / "small.glx"
    paths = demo_benchmark.db_paths[:24]
    build_index(paths, [p.stem for p in paths], out, settings={"codebook_size": 256}, progress=False).collection.close()
    return out


def test_rerank_options_reach_the_word_and_descriptor_matchers(small_index: Path, demo_benchmark,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict = {}
    real_words, real_desc = search_module.rerank_words, search_module.rerank

    def spy_words(qw, cands, scores, options, **kw):
        seen["words"] = (qw.words.shape[1], options, kw)
        return real_words(qw, cands, scores, options, **kw)

    def spy_desc(query, cands, scores, **kw):
        seen["descriptors"] = kw
        return real_desc(query, cands, scores, **kw)

    monkeypatch.setattr(search_module, "rerank_words", spy_words)
    monkeypatch.setattr(search_module, "rerank", spy_desc)
    q = demo_benchmark.query_paths[0]
    with Searcher.open(small_index, settings={"hypotheses": 3, "max_hamming": 17, "word_assignments": 2,
                                              "threshold_px": 9.0, "verify_min_inliers": 7, "lo_iterations": 1,
                                              "order": "verified", "lo_hypotheses": 2}) as s:
        s.search(q, top=5)
    width, opts, kw = seen["words"]
    assert width == 2 and (opts.hypotheses, opts.max_hamming, opts.threshold_px, opts.lo_iterations,
                           opts.lo_hypotheses) == (3, 17, 9.0, 1, 2)
    assert kw == {"min_inliers": 7, "verify_min_inliers": 7}
    with Searcher.open(small_index, settings={"matcher": "descriptors", "ratio": 0.7, "threshold_px": 11.0}) as s:
        s.search(q, top=5)
    assert seen["descriptors"]["matcher"].ratio == 0.7 and seen["descriptors"]["verifier"].threshold_px == 11.0


def test_extractor_options_reach_opencv(demo_benchmark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import glocal.models.sift as sift_module

    calls: list[dict] = []
    real = cv2.SIFT_create

    def spy(**kw):
        calls.append(kw)
        return real(**kw)

    monkeypatch.setattr(sift_module.cv2, "SIFT_create", spy)
    paths = demo_benchmark.db_paths[:6]
    res = build_index(paths, [p.stem for p in paths], tmp_path / "x.glx", progress=False,
                      settings={"max_keypoints": 150, "n_octave_layers": 2, "sigma": 1.4, "contrast_threshold": 0.03,
                                "codebook_size": 16})
    try:
        assert all(f.num_features <= 150 for f in res.collection.features)
        assert max(f.num_features for f in res.collection.features) == 150
    finally:
        res.collection.close()
    assert calls and all(c["nOctaveLayers"] == 2 and c["sigma"] == 1.4 and c["contrastThreshold"] == 0.03
                         for c in calls)


def test_methods_show_lists_the_verifier_and_extractor_options() -> None:
    res = runner.invoke(app, ["methods", "show", "sift"])
    assert res.exit_code == 0, res.output
    for key in ("matcher", "max_hamming", "hypotheses", "verify_min_inliers", "ratio", "threshold_px",
                "rerank_top", "max_keypoints", "n_octave_layers"):
        assert f"\n  {key} " in res.output, key


def test_verified_flag_on_a_known_positive_and_a_known_negative(demo_benchmark, demo_index) -> None:
    g = demo_benchmark.gnd[0]
    hits = demo_index.search(demo_benchmark.query_paths[0], box=tuple(g["bbx"]), top=len(demo_index))
    by_index = {h.index: h for h in hits}
    threshold = demo_index.options.rerank.verify_min_inliers
    assert threshold >= 1
    positive = by_index[g["easy"][0]]  # the query's landmark, mildly transformed
    negative = by_index[demo_benchmark.gnd[1]["easy"][0]]  # another landmark's photo
    assert positive.verified and positive.inliers >= threshold
    assert not negative.verified and negative.inliers < threshold
    assert positive.to_dict()["verified"] is True and negative.to_dict()["verified"] is False
    # over every demo query, at most ~1 % of the negatives are verified (the threshold's calibrated rate; the
    # demo's mirror images and look-alikes are hard negatives) and most positives are
    false_yes = negatives = true_yes = positives = 0
    for q, gq in enumerate(demo_benchmark.gnd):
        found = demo_index.search(demo_benchmark.query_paths[q], box=tuple(gq["bbx"]), top=len(demo_index))
        pos, junk = set(gq["easy"]) | set(gq["hard"]), set(gq["junk"])
        for h in found:
            if h.index in pos:
                positives, true_yes = positives + 1, true_yes + h.verified
            elif h.index not in junk:
                negatives, false_yes = negatives + 1, false_yes + h.verified
    assert false_yes / negatives <= 0.02, (false_yes, negatives)
    assert true_yes / positives >= 0.7, (true_yes, positives)


def test_words_file_is_verified_and_an_index_without_it_falls_back(small_index: Path, demo_benchmark,
                                                                   tmp_path: Path) -> None:
    copy = tmp_path / "copy.glx"
    shutil.copytree(small_index, copy)
    assert verify_index(copy).ok
    data = bytearray((copy / "words.glf").read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a middle record (a torn last record is a crash's tail, not damage)
    (copy / "words.glf").write_bytes(bytes(data))
    assert any(d.kind == "words" for d in verify_index(copy).damage)
    fixed = repair_index(copy)
    assert fixed.after is not None and fixed.after.ok and fixed.dropped == []
    assert (copy / "words.glf").read_bytes() == (small_index / "words.glf").read_bytes()  # written again, same
    (copy / "words.glf").unlink()
    q = demo_benchmark.query_paths[0]
    with Searcher.open(small_index) as s:
        want = [(h.index, h.inliers) for h in s.search(q, top=5, rerank_top=5)]
    with Searcher.open(copy) as s, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = s.search(q, top=5, rerank_top=5)
    assert any("descriptor matching instead" in str(w.message) for w in caught)
    assert {h.index for h in got} == {i for i, _ in want}


def test_codebook_smaller_than_requested_is_said_and_recorded(demo_benchmark, tmp_path: Path) -> None:
    folder = tmp_path / "few"
    folder.mkdir()
    for p in demo_benchmark.db_paths[:4]:
        shutil.copy(p, folder / p.name)
    idx = tmp_path / "few.glx"
    res = runner.invoke(app, ["index", "build", str(folder), "--out", str(idx), "--codebook-size", "100000",
                              "--set", "max_keypoints=100"], env={"GLOCAL_PROGRESS": "0"})
    assert res.exit_code == 0, res.output
    assert "requested 100,000 words, trained" in res.output
    manifest = json.loads((idx / "manifest.json").read_text())
    assert manifest["codebook"]["codebook_size_requested"] == 100000
    assert manifest["codebook"]["codebook_size"] < 100000
    info = runner.invoke(app, ["index", "info", str(idx), "--json"])
    stats = json.loads(info.output)
    assert stats["codebook_words_requested"] == 100000
    assert stats["codebook_words"] == manifest["codebook"]["codebook_size"] <= 400 // 39
    # a codebook of the requested size says nothing
    ok = runner.invoke(app, ["index", "build", str(folder), "--out", str(tmp_path / "ok.glx"), "--codebook-size",
                             "8"], env={"GLOCAL_PROGRESS": "0"})
    assert ok.exit_code == 0 and "requested" not in ok.output


def test_query_max_side_extracts_the_query_smaller_in_original_pixels(small_index: Path, demo_benchmark) -> None:
    q = demo_benchmark.query_paths[0]
    with Searcher.open(small_index) as full, Searcher.open(small_index, settings={"query_max_side": 160}) as small:
        a, b = full.query_features(q), small.query_features(q)
        assert small.database_extractor.max_side == full.extractor.max_side  # images added keep the index's size
        hits = small.search(q, top=3)
    assert 0 < b.num_features < a.num_features
    # keypoints stay in original pixels: both spread over the same image extent
    assert (b.keypoints.max(axis=0) > 0.6 * a.keypoints.max(axis=0)).all()
    assert hits and hits[0].inliers > 0


def test_hybrid_and_extra_query_words_reach_the_verifiers(small_index: Path, demo_benchmark,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict = {}
    real_words, real_checks = search_module.rerank_words, search_module.add_descriptor_checks

    def spy_words(qw, cands, scores, options, **kw):
        seen["width"] = qw.words.shape[1]
        return real_words(qw, cands, scores, options, **kw)

    def spy_checks(results, query, candidate, positions, **kw):
        seen["positions"], seen["kw"] = list(positions), kw
        return real_checks(results, query, candidate, positions, **kw)

    monkeypatch.setattr(search_module, "rerank_words", spy_words)
    monkeypatch.setattr(search_module, "add_descriptor_checks", spy_checks)
    q = demo_benchmark.query_paths[0]
    with Searcher.open(small_index, settings={"word_assignments": 8}) as s:
        assert s.collection.stage.query_assignments == 5
        plain = s.search(q, top=6, rerank_top=6)
    assert seen["width"] == 8 and "positions" not in seen  # 8 words for verification; no descriptor check
    with Searcher.open(small_index, settings={"descriptor_top": 3, "ratio": 0.75, "threshold_px": 12.0}) as s:
        hybrid = s.search(q, top=6, rerank_top=6)
    assert seen["positions"] == [0, 1, 2]  # the best 3 by first-stage score
    assert seen["kw"]["matcher"].ratio == 0.75 and seen["kw"]["verifier"].threshold_px == 12.0
    assert {h.index for h in hybrid} == {h.index for h in plain}
    with Searcher.open(small_index, settings={"descriptor_top": 2, "descriptor_pick": "unverified",
                                              "verify_min_inliers": 10 ** 6}) as s:
        s.search(q, top=6, rerank_top=6)
    assert seen["positions"] == [0, 1]
    res = runner.invoke(app, ["search", str(small_index), str(q), "--set", "descriptor_pick=unverified",
                              "--set", "descriptor_top=2", "--set", "verify_min_inliers=0"])
    assert res.exit_code != 0 and "verify_min_inliers" in res.output


def test_order_options_reach_the_final_order_and_hits_show_their_key(small_index: Path, demo_benchmark,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict = {}
    real = search_module.reorder

    def spy(results, **kw):
        seen.update(kw)
        return real(results, **kw)

    monkeypatch.setattr(search_module, "reorder", spy)
    q = demo_benchmark.query_paths[0]
    with Searcher.open(small_index) as s:
        plain = s.search(q, top=8, rerank_top=8)
    with Searcher.open(small_index, settings={"inlier_cell_px": 16.0, "shortlist_weight": 2.0}) as s:
        hits = s.search(q, top=8, rerank_top=8)
    assert seen == {"cell_px": 16.0, "shortlist_weight": 2.0, "min_inliers": 0}
    assert {h.index for h in hits} == {h.index for h in plain}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    best = max(h.shortlist_score for h in hits)
    top = hits[0]
    assert top.inliers > 0 and top.score <= top.inliers + 2.0 * top.shortlist_score / best + 1e-9
    # the yes/no decision does not move with the order
    assert {h.index: (h.inliers, h.verified) for h in hits} == {h.index: (h.inliers, h.verified) for h in plain}
    res = runner.invoke(app, ["search", str(small_index), str(q), "--set", "inlier_cell_px=-1"])
    assert res.exit_code != 0 and "inlier_cell_px" in res.output and "Traceback" not in res.output
