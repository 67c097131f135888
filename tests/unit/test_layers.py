"""The package's import graph: no circle between modules or packages, and each layer
imports only the layers below it, so that the tree reads in the order data flows."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import twinkly

PACKAGE = Path(twinkly.__file__).resolve().parent
# Lowest first. A layer may import itself and any layer before it, never one after.
LAYERS = (
    "interfaces",
    "wire",
    "sql",
    "config",
    "tracking",
    "proxy",
    "report",
    "perf",
    "compare",
    "ops",
    "cli",
    "app",
    "testing",
    "__main__",
)
MAX_TOP_LEVEL_MODULES = 8


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the twinkly modules it imports (anywhere in it, lazily or not)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


class LayerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.graph = import_graph()

    def test_the_graph_is_read(self) -> None:
        # A broken reader would pass every test below.
        self.assertIn("twinkly.wire.framing", self.graph["twinkly.proxy.session"])
        self.assertIn("twinkly.compare.comparator", self.graph["twinkly.compare.sessions"])

    def test_no_module_imports_itself_back(self) -> None:
        self.assertEqual(cycles(self.graph), [])

    def test_no_package_imports_itself_back(self) -> None:
        packages: dict[str, set[str]] = defaultdict(set)
        for module, imported in self.graph.items():
            for other in imported:
                if layer_of(other) != layer_of(module):
                    packages[layer_of(module)].add(layer_of(other))
        self.assertEqual(cycles(packages), [])

    def test_each_layer_imports_only_the_layers_below(self) -> None:
        upward = []
        for module, imported in sorted(self.graph.items()):
            if layer_of(module) == "__init__":
                continue
            rank = LAYERS.index(layer_of(module))
            for other in sorted(imported):
                if LAYERS.index(layer_of(other)) > rank:
                    upward.append(f"{module} -> {other}")
        self.assertEqual(upward, [])

    def test_every_package_has_a_layer(self) -> None:
        unknown = {layer_of(m) for m in self.graph} - set(LAYERS) - {"__init__"}
        self.assertEqual(unknown, set())

    def test_few_modules_directly_under_the_package(self) -> None:
        top = [p.name for p in PACKAGE.glob("*.py")]
        self.assertLessEqual(len(top), MAX_TOP_LEVEL_MODULES, top)
