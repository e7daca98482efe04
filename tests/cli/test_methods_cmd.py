"""``glocal methods``: everything it prints comes from the registry, and the README's table is its output."""
from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from glocal import methods
from glocal.cli.methods_cmd import markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"
runner = CliRunner()


def test_readme_method_table_is_rendered_from_the_registry() -> None:
    """After adding or changing a method, paste ``python -c 'from glocal.cli.methods_cmd import
    markdown_table; print(markdown_table())'`` over the README's "Methods (`--method`)" table."""
    table = markdown_table()
    assert table in README.read_text(encoding="utf-8"), "README.md's method table is stale:\n" + table
    rows = table.splitlines()[2:]
    assert len(rows) == len(methods.names())
    assert [row.split("`")[1] for row in rows] == methods.names()


def test_list_names_every_method() -> None:
    from glocal.cli.main import app

    res = runner.invoke(app, ["methods"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    listed = [line.split()[0] for line in res.output.splitlines() if line.split()]
    assert set(methods.names()) <= set(listed)
    payload = json.loads(runner.invoke(app, ["methods", "--json"]).output)
    assert [m["name"] for m in payload] == methods.names()
    default = methods.default_method()
    assert [m["name"] for m in payload if m["default"]] == [default]
    assert all(isinstance(m["needs_weights"], bool) and m["first_stage"] in ("asmk", "global") for m in payload)


def test_show_prints_every_option_with_its_default() -> None:
    from glocal.cli.main import app

    spec = methods.get("sift")
    res = runner.invoke(app, ["methods", "show", "sift"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    for group in ("extractor", "index", "search", "rerank"):
        assert any(line.startswith(group) for line in lines), group
    for info in spec.describe():
        line = next((x for x in lines if x.split() and x.split()[0] == info.name), None)
        assert line is not None, f"{info.group}.{info.name} not shown"
        assert f"= {json.dumps(info.default)} " in line and info.type in line and info.help in line
        for choice in info.choices or ():
            assert str(choice) in line
    shown = json.loads(runner.invoke(app, ["methods", "show", "sift", "--json"]).output)
    assert shown["name"] == "sift"
    assert {(g, o["name"]): o["default"] for g, opts in shown["options"].items() for o in opts} == {
        (i.group, i.name): json.loads(json.dumps(i.default)) for i in spec.describe()}


def test_show_unknown_method_is_one_line_naming_the_known_ones() -> None:
    from glocal.cli.main import app

    res = runner.invoke(app, ["methods", "show", "nope"])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown method 'nope'")
    assert all(name in lines[0] for name in methods.names()) and "Traceback" not in res.output
