"""The import graph of our packages, drawn from the source with `ast` (nothing is imported to draw it)."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# package name -> the folder holding it
PACKAGE_ROOTS = {"turbosite": REPO, "generation": REPO, "inference": REPO, "turbokernels": REPO / "kernels"}
# The GPU worker's modules: the only part of `generation` that may import torch, inference or turbokernels.
WORKER_SIDE = frozenset({"generation.actors", "generation.worker", "generation.management.commands.run_gpu_worker",
                         "generation.group_worker", "generation.gpu_readings"})
GPU_STACK = ("torch", "triton", "transformers", "inference", "turbokernels")


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    lazy: bool  # inside a function: runs when called, not when the module is imported


def module_files() -> dict[str, Path]:
    """Every module of our packages by dotted name."""
    modules: dict[str, Path] = {}
    for package, root in PACKAGE_ROOTS.items():
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def is_web_module(name: str) -> bool:
    return name.split(".")[0] in ("turbosite", "generation") and name not in WORKER_SIDE


def in_gpu_stack(name: str) -> bool:
    return name.split(".")[0] in GPU_STACK


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: list[tuple[str, bool]] = []  # (imported dotted name, lazy)
        self.depth = 0

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            for child in node.orelse:  # the TYPE_CHECKING body never runs
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((alias.name, self.depth > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base_parts = self.package.split(".")
            base_parts = base_parts[: len(base_parts) - (node.level - 1)]
            base = ".".join(base_parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        for alias in node.names:
            # `from a import b` imports the module a.b when there is one, else the name b of module a.
            self.found.append((f"{base}.{alias.name}", self.depth > 0))
            self.found.append((base, self.depth > 0))


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """The longest prefix of `name` that is one of our modules, or the top-level name of a third-party one."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return parts[0]


def import_edges() -> list[Edge]:
    modules = module_files()
    edges: set[Edge] = set()
    for name, path in modules.items():
        collector = _Collector(name, path.name == "__init__.py")
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        for imported, lazy in collector.found:
            target = _resolve(imported, modules)
            if target != name and target:
                edges.add(Edge(name, target, lazy))
    # An import that appears both at module level and in a function counts as eager.
    eager = {(e.source, e.target) for e in edges if not e.lazy}
    return sorted((e for e in edges if not e.lazy or (e.source, e.target) not in eager),
                  key=lambda e: (e.source, e.target))


def find_cycle(edges: list[Edge], nodes: set[str]) -> list[str] | None:
    """One import cycle among `nodes` (as a closed path), or None."""
    graph: dict[str, list[str]] = {node: [] for node in nodes}
    for edge in edges:
        if edge.source in nodes and edge.target in nodes:
            graph[edge.source].append(edge.target)
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def eager_closure(start: str, edges: list[Edge]) -> set[str]:
    """Every module (ours or third-party top-level) importing `start` loads, following module-level imports."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        if not edge.lazy:
            graph.setdefault(edge.source, set()).add(edge.target)
    seen: set[str] = set()
    todo = [start]
    while todo:
        node = todo.pop()
        for nxt in graph.get(node, ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen
