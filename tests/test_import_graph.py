"""The package's module-level imports form no cycle, and no module grows past a readable size.

Only imports that run when a module is imported count: ``import`` / ``from ... import`` statements at module
level (also inside a module-level ``if`` / ``try`` / ``with``), not those inside functions or classes, nor
those under ``if TYPE_CHECKING:``. ``from glocal.x import y`` is an edge to ``glocal.x.y`` when ``y`` is a
submodule (a file or a package), else to ``glocal.x``; a package stands for its ``__init__``.
"""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "glocal"
MAX_LINES = 420


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements executed at import time: module level, through if / try / with, not into functions,
    classes or ``if TYPE_CHECKING:`` bodies."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _module_level_imports(node.body)
            yield from _module_level_imports(node.orelse)
        elif isinstance(node, ast.Try | ast.TryStar):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _module_level_imports(block)
        elif isinstance(node, ast.With):
            yield from _module_level_imports(node.body)


def _resolve_from(module: str, path: Path, node: ast.ImportFrom) -> str | None:
    """The absolute module a ``from`` statement names (relative imports resolved against ``module``)."""
    if node.level == 0:
        return node.module
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _every_import(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, inside functions too, except those under ``if TYPE_CHECKING:``."""
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node.test)
                   for stmt in node.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in typing_only:
            yield node


def import_graph(include_function_level: bool = False) -> dict[str, set[str]]:
    """Module -> the ``glocal`` modules it imports at module level (with ``include_function_level``: also
    the lazy imports inside functions)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found = _every_import(tree) if include_function_level else _module_level_imports(tree.body)
        for node in found:
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                source = _resolve_from(module, path, node)
                if source is None:
                    continue
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
            for target in targets:
                while target not in modules and "." in target:  # ``import glocal.x.y`` of a name: its module
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != module:
                    graph[module].add(target)
    return graph


def cyclic_components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan) that hold a cycle: more than one module, or a self-import."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def shortest_cycle(graph: dict[str, set[str]], start: str, within: set[str]) -> list[str]:
    """A shortest closed path ``start -> ... -> start`` through modules of ``within`` (breadth first)."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & within):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise ValueError(f"no cycle through {start}")


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, as one shortest cycle per strongly connected component (through the component's
    first module): breaking each reported cycle until none is left removes them all."""
    return [shortest_cycle(graph, c[0], set(c)) for c in cyclic_components(graph)]


def _report(graph: dict[str, set[str]]) -> str:
    lines = []
    for component in cyclic_components(graph):
        lines.append(" -> ".join(shortest_cycle(graph, component[0], set(component))))
        if len(component) > 2:
            edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a] & set(component))]
            lines.append("    imports among these modules: " + "; ".join(edges))
    return "\n".join(lines)


def _long_modules() -> list[str]:
    return sorted(f"{p.relative_to(PACKAGE.parent)}: {n} lines" for p in PACKAGE.rglob("*.py")
                  if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES)


def test_find_cycles_reports_every_cycle() -> None:
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c", "f"}, "f": {"a"}, "g": {"g"}, "h": set()}
    assert find_cycles(graph) == [["a", "b", "a"], ["c", "d", "e", "c"], ["g", "g"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_only_imports_run_at_import_time_count() -> None:
    tree = ast.parse(
        "import a\n"
        "from typing import TYPE_CHECKING\n"
        "try:\n    import b\nexcept ImportError:\n    import c\n"
        "if TYPE_CHECKING:\n    import d\nelse:\n    import e\n"
        "def f():\n    import g\n"
        "class H:\n    import i\n"
    )
    names = [n.names[0].name if isinstance(n, ast.Import) else n.module for n in _module_level_imports(tree.body)]
    assert names == ["a", "typing", "b", "c", "e"]


def test_graph_resolves_submodules_and_packages() -> None:
    graph = import_graph()
    assert "glocal.index.codebook" in graph["glocal.index.quantizer"]  # from glocal.index.codebook import X
    assert "glocal.index.ivfpq" in graph["glocal.index.global_index"]  # from glocal.index import ivfpq
    assert "glocal.index.layout" not in graph["glocal.index.merge"]  # only under TYPE_CHECKING there
    assert all(not m.endswith(".__init__") for m in graph) and "glocal.index" in graph


def test_no_import_cycles() -> None:
    """Module-level imports of glocal/ form a DAG; a lazy import inside a function is not a fix for a cycle
    unless the function really needs the import only at call time."""
    graph = import_graph()
    assert not find_cycles(graph), "module-level import cycles in glocal/:\n" + _report(graph)


def test_no_import_cycles_through_lazy_imports_either() -> None:
    """The house has no circle even counting the imports made inside functions: a lazy import is for cost
    (torch), not a way around a cycle."""
    graph = import_graph(include_function_level=True)
    assert not find_cycles(graph), "import cycles in glocal/ (lazy imports included):\n" + _report(graph)


def test_no_module_over_max_lines() -> None:
    long = _long_modules()
    assert not long, f"modules over {MAX_LINES} lines (split them along a real seam):\n" + "\n".join(long)
