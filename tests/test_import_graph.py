"""crema's import graph (docs: /work/shared/docs/layout.md): no cycles, and every arrow between packages points down.

The graph is read from the sources with `ast`, not by importing them: every `import` and `from ... import` of a crema
module counts, module-level or inside a function (a function-level import only hides a cycle until that function
runs), except those under `if TYPE_CHECKING:` (never executed). `from pkg import name` is an edge to the submodule
`pkg.name` when there is one, else to `pkg` itself. Importing a submodule also runs its packages' `__init__`; those
implicit edges are left out (a package importing its own submodules is no cycle).

Checked: no cycle among the modules of kernels, net, server, scraper, benchmarks and crema.py (each cycle printed with
its edges); the packages are layered kernels < net < scraper < server < benchmarks < crema (the CLI): a module imports
only its own layer or lower ones, so no library package imports the CLI or the benchmarks.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("kernels", "net", "scraper", "server", "benchmarks")
LAYERS = {name: rank for rank, name in enumerate((*PACKAGES, "crema"))}


def crema_modules(root: Path = ROOT) -> dict[str, Path]:
    """Module name -> source file for crema.py and every module of the packages (a package is its __init__.py)."""
    found = {"crema": root / "crema.py"}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skipped.update(id(n) for n in ast.walk(child))
    return skipped


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The crema modules that module `name` (source `path`) imports, at any depth of its code."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skipped = _type_checking_nodes(tree)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                targets.add(sub if sub in modules else module)
    edges = set()
    for target in targets:
        while target and target not in modules:  # a name inside a module: the module; third-party: dropped
            target = target.rpartition(".")[0]
        if target and target != name:
            edges.add(target)
    return edges


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = crema_modules(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_the_graph_is_read_from_the_sources() -> None:
    graph = import_graph()
    assert {"crema", "kernels.conv", "kernels.gpu", "kernels.gpu.conv", "net.net", "server.app"} <= set(graph)
    assert "kernels.conv" in graph["kernels.gpu.conv"]  # from kernels.conv import ...
    assert "kernels.gpu.optim" in graph["net.solver"]  # a function-level `from kernels.gpu import optim as ...`
    assert "kernels.gpu.backend" in graph["kernels.gpu"]  # from kernels.gpu.backend import ...


def test_cycles_are_found(tmp_path: Path) -> None:
    """The checker itself, on a made-up tree: a cycle through a function-level relative import, and a
    TYPE_CHECKING import that is no cycle."""
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "crema.py").write_text("import net.a\n")
    (tmp_path / "net" / "a.py").write_text("from . import b\n")
    (tmp_path / "net" / "b.py").write_text("def f():\n    from .a import g\n")
    (tmp_path / "net" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from net import d\n"
    )
    (tmp_path / "net" / "d.py").write_text("from net.c import x\nimport numpy\n")
    graph = import_graph(tmp_path)
    assert graph["net.b"] == {"net.a"} and graph["net.c"] == set() and graph["net.d"] == {"net.c"}
    assert cycles(graph) == [["net.a", "net.b"]]
    assert shortest_cycle(graph, ["net.a", "net.b"]) == ["net.a", "net.b", "net.a"]


def shortest_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One shortest cycle through the modules of a strongly connected component, as a path back to its start."""
    members, best = set(component), []
    for start in component:
        parents: dict[str, str | None] = {start: None}
        frontier, last = [start], None
        while frontier and last is None:  # breadth first: the first way back to start is a shortest one
            step = []
            for node in frontier:
                children = sorted(graph[node] & members)
                if start in children:
                    last = node
                    break
                for child in children:
                    if child not in parents:
                        parents[child] = node
                        step.append(child)
            frontier = step
        if last is not None:
            path = [last]
            while parents[path[-1]] is not None:
                path.append(parents[path[-1]])
            if not best or len(path) + 1 < len(best):
                best = [*reversed(path), start]
    return best


def test_no_import_cycles() -> None:
    graph = import_graph()
    found = cycles(graph)
    report = [
        f"{len(component)} modules import each other, e.g. " + " -> ".join(shortest_cycle(graph, component))
        for component in found
    ]
    assert not found, "\n".join(report)


def test_arrows_point_down() -> None:
    """kernels < net < scraper < server < benchmarks < crema: no library package imports the CLI or the benchmarks,
    kernels imports no other crema package, net none but kernels."""
    wrong = [
        f"{a} -> {b}"
        for a, targets in import_graph().items()
        for b in targets
        if LAYERS[b.split(".")[0]] > LAYERS[a.split(".")[0]]
    ]
    assert not wrong, "imports that point up:\n" + "\n".join(sorted(wrong))
