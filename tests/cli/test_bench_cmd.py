"""``glocal bench extract|memory``: a row per requested method x configuration x runtime, well-formed markdown
and JSON, and a memory row from a real index (tiny settings: the timings themselves are not checked)."""
from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from glocal import methods
from glocal.cli.main import app
from glocal.evaluate.bench import PAPERS, configurations, runtimes_of, seeds_table

pytestmark = pytest.mark.usefixtures("torch_one_thread")
ENV = {"GLOCAL_PROGRESS": "0", "COLUMNS": "250"}


def _spec(kind: str):
    """A method whose extractor has local and global scales ("two"), one pyramid ("one") or none ("none")."""
    def has(spec, name: str) -> bool:
        return any(f.name == name for f in __import__("dataclasses").fields(spec.extractor))

    for spec in methods.all_specs():
        if kind == "two" and has(spec, "global_scales") and spec.first_stage == "global" and has(spec, "backbone"):
            return spec
        if kind == "one" and has(spec, "scales") and not has(spec, "global_scales") and spec.first_stage == "global":
            return spec
        if kind == "none" and not has(spec, "scales"):
            return spec
    raise AssertionError(kind)


def test_configurations_follow_the_extractor_options() -> None:
    two, one, none = _spec("two"), _spec("one"), _spec("none")
    labels = [label for label, _ in configurations(two, (1, 7))]
    assert labels == ["1 scale, global", "1 scale, global+local", "7 scales, global", "7 scales, global+local"]
    over = dict(configurations(two, (7,)))
    assert over["7 scales, global"]["scales"] == () and len(over["7 scales, global"]["global_scales"]) == 7
    assert len(over["7 scales, global+local"]["scales"]) == 7 and len(over["7 scales, global+local"]["global_scales"]) == 3
    assert [label for label, _ in configurations(one, (1, 3, 5))] == ["1 scale, global", "3 scales, global",
                                                                       "5 scales, global"]
    assert [label for label, _ in configurations(none, (1, 3))] == ["native"]
    assert runtimes_of(none, ["torch", "onnx"]) == ["native"]
    assert "torch-nchw" in runtimes_of(one, ["torch", "torch-nchw"])


def test_a_global_method_that_verifies_with_local_features_is_labelled_global_plus_local() -> None:
    """A single-pyramid global method with re-ranking (its local features come from another extractor, e.g.
    gem-aliked) is timed as global+local, one without re-ranking as global, whatever the registry holds."""
    import dataclasses

    def has(spec, name: str) -> bool:
        return any(f.name == name for f in dataclasses.fields(spec.extractor))

    seen = set()
    for spec in methods.all_specs():
        if not has(spec, "scales") or has(spec, "global_scales") or spec.first_stage != "global":
            continue
        label = configurations(spec, (1,))[0][0]
        assert label == ("1 scale, global+local" if spec.rerank.rerank_top > 0 else "1 scale, global"), spec.name
        seen.add(spec.rerank.rerank_top > 0)
    assert seen == {True, False}  # the registry has both kinds (gem-aliked, gem)


def test_bench_extract_json_has_a_row_per_configuration() -> None:
    pytest.importorskip("torch")
    two, none = _spec("two"), _spec("none")
    res = CliRunner().invoke(app, ["bench", "extract", "--methods", f"{none.name},{two.name}", "--scales", "1",
                                   "--scales", "3", "--repeats", "2", "--warmup", "0", "--size", "64", "--json"], env=ENV)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    got = [(r["method"], r["config"], r["runtime"]) for r in data["extract"]]
    assert got == [(none.name, "native", "native")] + [
        (two.name, c, "torch") for c in ("1 scale, global", "1 scale, global+local", "3 scales, global",
                                         "3 scales, global+local")]
    for r in data["extract"]:
        assert "error" not in r, r
        assert 0 < r["ms_median"] <= r["ms_p95"] and r["repeats"] == 2 and r["peak_mb"] >= 0
    assert any(r["local_features"] > 0 for r in data["extract"] if r["config"].endswith("global+local"))
    assert all(r["local_features"] == 0 for r in data["extract"] if r["config"].endswith(", global"))
    assert any("torch threads" in n for n in data["notes"]) and data["memory"] == []


def test_bench_extract_markdown_and_memory_rows() -> None:
    pytest.importorskip("torch")
    import torch

    one, none = _spec("one"), _spec("none")
    res = CliRunner().invoke(app, ["bench", "extract", "-m", one.name, "-m", none.name, "--scales", "1", "--runtime",
                                   "torch", "--runtime", "torch-nchw", "--repeats", "1", "--warmup", "0", "--size",
                                   "64", "--with-memory", "--images", "3"], env=ENV)
    assert res.exit_code == 0, res.output
    table = [line for line in res.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| method | configuration | device | runtime")
    rows = [line for line in table if line.startswith((f"| {one.name} |", f"| {none.name} |"))]
    assert len(rows) == 2 + 1 + 2  # extraction: torch and torch-nchw for one, native for none; memory: one each
    assert all(len(r.split("|")) == len(table[0].split("|")) for r in table[:4])
    if not torch.cuda.is_available():
        assert "no GPU" in res.stdout
    seeds = [line for line in table if "appendix Table 1" in line]
    assert len(seeds) == sum("appendix Table 1" in p["source"] for p in PAPERS) and "| 2,260 | | | 27.6 |" in res.stdout


def test_bench_memory_json_scales_a_real_index() -> None:
    none = _spec("none")
    res = CliRunner().invoke(app, ["bench", "memory", "--methods", none.name, "--images", "3", "--size", "160",
                                   "--json"], env=ENV)
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)["memory"]
    assert row["method"] == none.name and row["images"] == 3
    assert 0 < row["first_stage_bytes_per_image"] <= row["all_bytes_per_image"]
    scaled = (row["first_stage_bytes_per_image"] * 1_001_001 + row["fixed_bytes"]) / 1e9
    assert row["first_stage_gb_r1m"] == pytest.approx(scaled, abs=0.01)


def test_unknown_method_is_one_line() -> None:
    res = CliRunner().invoke(app, ["bench", "memory", "--methods", "nosuch"], env=ENV)
    assert res.exit_code == 2 and "unknown nosuch" in res.output and "Traceback" not in res.output


def test_seeds_table_puts_our_rows_above_the_papers() -> None:
    rows = [{"method": "m", "config": "1 scale, global", "runtime": "torch", "precision": "fp32", "batch": 1,
             "device": "cpu", "threads": 2, "ms_median": 123.4}]
    memory = [{"method": "m", "first_stage_gb_r1m": 7.5, "all_gb_r1m": 9.0}]
    lines = seeds_table(rows, memory).splitlines()
    assert lines[2] == "| m (1 scale, global; torch, fp32, batch 1) | glocal, cpu, 2 threads | 123.4 | 7.5 | 9.0 | |"
    assert re.match(r"\| DELF-R-ASMK\* \| DELG .*Table 1 \| 2,260 \| \| \| 27.6 \|$", lines[3])
