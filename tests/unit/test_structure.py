"""The package's shape, computed from its source: layers import downwards only, and every
external program is started from one module.

An import cycle means two modules cannot be understood (or loaded, or replaced) apart; an
import inside a function is still a dependency, so it counts too. Only imports under
``if TYPE_CHECKING:`` are left out: they never run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "nestbuild"

#: The one module that may start other programs.
RUNNER = "nestbuild._tools.run"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(), str(p))
            for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: at any depth, except under TYPE_CHECKING."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _imports_in(other)
            continue
        yield from _imports_in(child)


def _imports_in(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    yield from _imports(node)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _graph() -> dict[str, set[str]]:
    """Module -> the nestbuild modules it imports (``from pkg import mod`` is ``pkg.mod``)."""
    trees = _modules()
    packages = {_module_name(p) for p in PACKAGE.rglob("__init__.py")}
    graph: dict[str, set[str]] = {name: set() for name in trees}
    for name, tree in trees.items():
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                source = _resolve(name, node, name in packages)
                targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in trees
                           else source for alias in node.names]
            graph[name].update(t for t in targets if t in trees and t != name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each shown as
    one closed path through it."""
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
            if len(component) > 1:
                found.append(_path_through(graph, set(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _path_through(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle from the component's first module back to itself."""
    start = min(component)
    previous: dict[str, str] = {}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & component):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if w not in previous:
                previous[w] = v
                queue.append(w)
    return sorted(component)


def _show(cycle: list[str]) -> str:
    return " -> ".join(m.removeprefix("nestbuild.") for m in cycle)


def test_no_import_cycle() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(_show(c) for c in cycles)


def test_a_cycle_is_found_and_shown() -> None:
    graph = {"a": {"b"}, "b": {"c", "d"}, "c": {"a"}, "d": set(), "e": {"e2"}, "e2": {"e"}}
    assert [_show(c) for c in _cycles(graph)] == ["a -> b -> c -> a", "e -> e2 -> e"]


def _imports_subprocess(tree: ast.Module) -> bool:
    return any(
        (isinstance(n, ast.Import) and any(a.name.split(".")[0] == "subprocess"
                                           for a in n.names))
        or (isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "subprocess")
        for n in _imports(tree))


def test_only_the_runner_imports_subprocess() -> None:
    importers = sorted(name for name, tree in _modules().items()
                       if name != RUNNER and _imports_subprocess(tree))
    assert not importers, (f"subprocess is imported outside {RUNNER} (use its names instead): "
                           + ", ".join(importers))


def test_imports_in_functions_count_and_type_checking_ones_do_not() -> None:
    tree = ast.parse("import a\nif TYPE_CHECKING:\n    import b\nelse:\n    import c\n"
                     "def f():\n    from d import e\n")
    assert sorted(ast.unparse(n) for n in _imports(tree)) == [
        "from d import e", "import a", "import c"]


#: What the command line may import besides the public API: its own modules, the error
#: types (their exit codes are the CLI's), and the presentation helpers (terminal-safe text,
#: atomic output files). Everything else it needs must be public, so a CI script can do it.
CLI_MAY_IMPORT = ("nestbuild._cli", "nestbuild.errors", "nestbuild._util.terminal",
                  "nestbuild._util.atomic")


def test_the_command_line_imports_only_the_public_api() -> None:
    wrong = []
    for module, tree in _modules().items():
        if not module.startswith("nestbuild._cli"):
            continue
        for node in _imports(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [_resolve(module, node, module == "nestbuild._cli")])
            for name in names:
                if name == "nestbuild" or not name.startswith("nestbuild"):
                    continue
                if not any(name == ok or name.startswith(ok + ".") for ok in CLI_MAY_IMPORT):
                    wrong.append(f"{module} imports {name} (line {node.lineno})")
    assert not wrong, "\n".join(wrong)
