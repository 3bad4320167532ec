"""The modules of helios and of pyblaze import each other without a cycle.

Every import statement counts: at the top of a module, inside functions, under
``TYPE_CHECKING``, and a package's ``__init__``. ``import a.b`` is an edge to ``a.b``;
``from a import b`` is an edge to the package ``a`` (its ``__init__`` runs and gives the
name) and, when ``a.b`` is a module, to ``a.b`` too; ``from a.b import c`` is an edge to
``a.b`` (and to ``a.b.c`` when that is a module). Relative imports count as the absolute
ones they stand for. So a module that imports its own package's face (``from . import x``
inside ``a``, or ``from a import x`` inside ``a.y``) closes a cycle with an ``__init__``
that imports it.

A type a lower module needs from a higher one (the trainer a model talks to, the engine a
pyblaze helper runs) comes from a Protocol in a lower module, never from an import.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

SRC = pathlib.Path(__file__).resolve().parents[1] / "src"


def _modules(package: str) -> dict[str, tuple[pathlib.Path, bool]]:
    """Every module of a package: dotted name -> (file, is a package ``__init__``)."""
    found = {}
    for path in (SRC / package).rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found[".".join(parts)] = (path, is_package)
    return found


def _imported(node: ast.AST, package: str, known: set[str]) -> list[str]:
    """The modules one import statement names (absolute, as described above)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        source = ".".join([*base, *([node.module] if node.module else [])])
    else:
        source = node.module or ""
    return [source, *(f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in known)]


def import_graph(*packages: str) -> dict[str, set[str]]:
    """The import edges between the modules of ``packages`` (imports of others left out)."""
    modules: dict[str, tuple[pathlib.Path, bool]] = {}
    for package in packages:
        modules.update(_modules(package))
    known = set(modules)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for target in _imported(node, package, known):
                if target in known and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_every_kind_of_import() -> None:
    graph = import_graph("helios")
    # Under TYPE_CHECKING, inside a function, relative, and through a package's face.
    assert "helios.core.utils" in graph["helios.core"]
    assert "helios.trainer.trainer" in graph["helios.trainer"]
    assert any(target.startswith("helios.model") for target in graph["helios.trainer.loops"])
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", ["helios", "pyblaze"])
def test_no_import_cycle(package: str) -> None:
    found = cycles(import_graph("helios", "pyblaze"))
    mine = [component for component in found if component[0].split(".")[0] == package]
    assert mine == [], f"import cycles in {package}: {mine}"


def test_helios_never_imports_pyblaze() -> None:
    graph = import_graph("helios", "pyblaze")
    upward = sorted(
        (name, target)
        for name, targets in graph.items()
        if name.startswith("helios")
        for target in targets
        if target.startswith("pyblaze")
    )
    assert upward == []
