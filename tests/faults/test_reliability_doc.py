"""``docs/RELIABILITY.md`` names only tests that exist, and covers every item of the reliability issue."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "RELIABILITY.md"


def _rows() -> list[list[str]]:
    lines = [line for line in DOC.read_text().splitlines() if line.startswith("| ") and not line.startswith("| #")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]


def test_every_named_test_exists():
    named = {ref for row in _rows() for ref in re.findall(r"`(tests/[\w/]+\.py)::(\w+)(?:\[[^\]]*\])?`", row[-1])}
    assert len(named) > 40
    for path, name in sorted(named):
        tree = ast.parse((ROOT / path).read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert name in defined, f"docs/RELIABILITY.md names {path}::{name}, which does not exist"


def test_every_row_has_a_test_and_every_item_a_row():
    rows = _rows()
    assert all(re.search(r"`tests/[\w/]+\.py::\w+", row[-1]) for row in rows), "a promise without a test"
    assert {row[0] for row in rows} >= {str(i) for i in range(1, 14)}
