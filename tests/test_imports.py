"""The package's layers point one way: its import graph has no cycle, and its modules import
each other at module top (the CLI alone imports its commands lazily, for start-up time), so
no lazy import hides a cycle. Read from the source with ast; nothing is imported."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "forgetbench"
LAZY_ALLOWED = {"forgetbench.cli"}  # each command imports what it needs when it runs


def module_name(path: Path) -> str:
    parts = ["forgetbench", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
PACKAGES = {module_name(p) for p in PACKAGE.rglob("__init__.py")}


def imported(node: ast.AST, importer: str) -> set[str]:
    """The package's modules an import statement runs: the named module (``from X import Y``
    names X.Y when that is a module, else X) and the packages above it that the importer is
    not already inside (importing a.b.c runs a.b's __init__ first)."""
    here = importer if importer in PACKAGES else importer.rpartition(".")[0]
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            up = here.split(".")[: len(here.split(".")) - node.level + 1]
            base = ".".join(up + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    else:
        return set()
    out = set()
    for name in names:
        if name not in MODULES:
            continue
        out.add(name)
        parts = name.split(".")
        for i in range(2, len(parts)):  # the root package's __init__ imports nothing
            parent = ".".join(parts[:i])
            if not (here == parent or here.startswith(parent + ".")):
                out.add(parent)
    out.discard(importer)
    return out


def graph() -> tuple[dict[str, set[str]], list[str]]:
    """Edges (module -> the modules it imports) and the imports found below module top."""
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    lazy = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            found = imported(node, name)
            edges[name] |= found
            if found and id(node) not in top and name not in LAZY_ALLOWED:
                lazy.append(f"{name}:{node.lineno} imports {', '.join(sorted(found))}")
    return edges, lazy


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_the_package_imports_have_no_cycle():
    edges, _ = graph()
    cycle = find_cycle(edges)
    assert cycle is None, " -> ".join(cycle)


def test_internal_imports_are_at_module_top():
    _, lazy = graph()
    assert not lazy, "\n".join(lazy)


@pytest.mark.parametrize("low", ["forgetbench.config", "forgetbench.store", "forgetbench.metrics",
                                 "forgetbench.regularizers", "forgetbench.datafiles"])
def test_the_lowest_layers_import_nothing_above_them(low):
    edges, _ = graph()
    above = {"forgetbench.sweep", "forgetbench.cli", "forgetbench.report", "forgetbench.train",
             "forgetbench.eval"}
    reach, todo = set(), [low]
    while todo:
        for n in edges[todo.pop()] - reach:
            reach.add(n)
            todo.append(n)
    assert not {m for m in reach if any(m == a or m.startswith(a + ".") for a in above)}


def test_the_checker_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
