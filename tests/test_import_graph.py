"""The package's import graph, built from the source with ast, has no cycles, and light modules stay light.

Every import counts, including those inside functions: a cycle through a deferred import is still a design
knot (two modules that each need the other), whether or not Python happens to resolve it at run time.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import mnistlab

PACKAGE = Path(mnistlab.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the mnistlab modules it imports (anywhere in its source; TYPE_CHECKING blocks excluded)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip: set[int] = set()
        for node in ast.walk(tree):  # imports under `if TYPE_CHECKING:` are for the type checker only
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip.update(id(child) for stmt in node.body for child in ast.walk(stmt))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package.split(".")[:len(package.split(".")) - node.level + 1], base]).strip(".")
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                # A package's __init__ importing its own submodules (re-exports) is not a cycle.
                if target and target != name and not target.startswith(name + "."):
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_finder_sees_a_cycle() -> None:
    """The oracle itself: a hand-made cycle is found, a tree is not."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_no_import_cycles() -> None:
    graph = import_graph()
    assert "mnistlab.training" in graph and "mnistlab.baselines" in graph["mnistlab.training"]  # the graph is real
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_serving_and_evaluating_never_import_training() -> None:
    """Device/precision live in mnistlab.device, so serve/predict/inference do not reach the training loop."""
    graph = import_graph()

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    for module in ("mnistlab.serve", "mnistlab.predict", "mnistlab.inference", "mnistlab.imaging"):
        assert "mnistlab.training" not in reach(module), module
    assert "mnistlab.predict" not in reach("mnistlab.imaging")  # image preparation knows no model


def test_import_and_help_do_not_import_torch() -> None:
    code = ("import sys, mnistlab, mnistlab.cli\n"
            "from mnistlab.cli import build_parser\n"
            "build_parser().format_help()\n"
            "print(sorted(m for m in ('torch', 'numpy', 'matplotlib', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
