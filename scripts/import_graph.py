"""The import graph of the package: modules, the imports between them, and the cycles.

Every ``import`` and ``from ... import`` of ``src/structdrop`` that names a module of the package
is an edge, whether it runs when the module is imported (top level), later (inside a function:
a lazy import) or never (under ``if TYPE_CHECKING``: for the type checker only). A cycle is a
strongly connected set of two or more modules; those of the top-level edges alone are the ones
that can break an import, those of the edges that run (top level and lazy) are the ones a
reader follows in circles.

Run: ``python scripts/import_graph.py [--edges]``.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "structdrop"


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")


def resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


Edges = set[tuple[str, str]]


def edges(modules: dict[str, Path]) -> tuple[Edges, Edges, Edges]:
    """(top-level, lazy, type-only edges) between the package's modules."""
    top: Edges = set()
    lazy: Edges = set()
    typing: Edges = set()
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = resolve(node, name, is_package)
                submodules = [f"{base}.{alias.name}" for alias in node.names]
                # ``from package import submodule`` imports the submodule; a name that is not
                # a submodule is taken from the package's own namespace
                targets = [m for m in submodules if m in modules]
                if len(targets) < len(submodules):
                    targets.append(base)
            found = set()
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith(PACKAGE):
                    found.add(target)
            kind = _where(tree, node)
            for target in found:
                {"top": top, "lazy": lazy, "typing": typing}[kind].add((name, target))
    return top, lazy - top, typing - top - lazy


def _where(tree: ast.Module, node: ast.AST) -> str:
    """``typing`` for an import under a top-level ``if TYPE_CHECKING``, ``top`` for one at the
    top level or in another top-level ``if``/``try`` (it runs at import time when its branch
    does), ``lazy`` for one inside a function."""
    if any(node is child for child in tree.body):
        return "top"
    for child in tree.body:
        if isinstance(child, ast.If | ast.Try) and any(n is node for n in ast.walk(child)):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                return "typing"
            return "top"
    return "lazy"


def cycles(nodes: list[str], graph: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components of two or more nodes (Tarjan)."""
    successors: dict[str, list[str]] = {node: [] for node in nodes}
    for source, target in graph:
        successors[source].append(target)
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in successors[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in nodes:
        if node not in index:
            visit(node)
    return sorted(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", action="store_true", help="list every edge")
    options = parser.parse_args()
    modules = {module_name(path): path for path in sorted((SRC / PACKAGE).rglob("*.py"))}
    top, lazy, typing = edges(modules)
    print(
        f"{len(modules)} modules, {len(top)} top-level imports, {len(lazy)} lazy imports, "
        f"{len(typing)} type-only imports"
    )
    graphs = (
        ("top-level imports", top),
        ("imports that run (top-level and lazy)", top | lazy),
        ("imports, type-only included", top | lazy | typing),
    )
    for label, graph in graphs:
        found = cycles(sorted(modules), graph)
        print(f"cycles of the {label}: {len(found)}")
        for component in found:
            print("  " + " <-> ".join(component))
    if options.edges:
        for source, target in sorted(top):
            print(f"{source} -> {target}")
        for source, target in sorted(lazy):
            print(f"{source} -> {target} (lazy)")
        for source, target in sorted(typing):
            print(f"{source} -> {target} (type-only)")


if __name__ == "__main__":
    main()
