"""Rules of the house that code review alone would let slip."""
from __future__ import annotations

import ast
from pathlib import Path

from glocal import methods

ROOT = Path(__file__).resolve().parents[1] / "glocal"


def _string_constants(tree: ast.AST) -> list[ast.Constant]:
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [n for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_method_names_are_spelled_only_in_their_spec_files() -> None:
    """Outside ``glocal/methods/`` (and the model code a spec points to), no code branches on or names a
    method: everything is derived from the registry."""
    names = set(methods.names())
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        room = path.relative_to(ROOT).parts[0]
        if room in ("methods", "models"):
            continue
        for node in _string_constants(ast.parse(path.read_text(encoding="utf-8"))):
            if node.value in names:
                found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: {node.value!r}")
    assert not found, "method names outside their spec files:\n" + "\n".join(found)


def test_cli_modules_do_not_reach_into_retrieval_internals() -> None:
    """The CLI parses and prints; it calls the library's entry points (builder, collection, searcher,
    runner), never the first stages, re-ranking or models directly."""
    internal = ("glocal.rerank", "glocal.index.asmk", "glocal.index.inverted_file", "glocal.index.global_index",
                "glocal.index.asmk_stage", "glocal.index.global_stage", "glocal.models.")
    found = []
    for path in sorted((ROOT / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(internal):
                found.append(f"{path.name}:{node.lineno}: {node.module}")
    assert not found, found


#: the rooms in the order a photo travels (docs/ARCHITECTURE.md); a room imports only from rooms before it
ROOMS = ["errors", "records", "progress", "io", "models", "methods", "extract", "index", "rerank", "search",
         "train", "weights", "evaluate", "serve", "demo", "cli", "__main__"]
BASE = {"errors", "records", "progress"}


def _room(module: str, names: list[str]) -> str | None:
    parts = module.split(".")
    if len(parts) > 1:
        return parts[1]
    return names[0] if names and names[0] in ROOMS else None  # from glocal import methods


def test_rooms_import_leftwards_only() -> None:
    """Every import inside glocal (module level or inside a function) goes to a room before its own."""
    rank = {r: i for i, r in enumerate(ROOMS)}
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        own = parts[0]
        if own not in rank:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "glocal":
                target = _room(node.module, [a.name for a in node.names])
                if target in rank and rank[target] > rank[own] and not {own, target} <= BASE:
                    wrong.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: {own} -> {target}")
    assert not wrong, "imports against the flow of rooms:\n" + "\n".join(wrong)
