"""The package's shape: no import cycle, and serving code never imports the training code."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "mmclf"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the mmclf modules it imports, at module level or inside functions."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
                    break
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "mmclf.training.train" in graph["mmclf.stages"]  # the graph sees imports inside functions too
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.slow  # 5-7 s: imports torch in a fresh interpreter
def test_serving_and_prediction_never_import_the_training_code():
    code = ("import sys, mmclf.serve, mmclf.pipeline, mmclf.inference; "
            "print(sorted(m for m in sys.modules if m.startswith('mmclf.training') or m == 'accelerate.accelerator'))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_the_layers_import_downwards_only_and_the_library_reads_no_command_line():
    """commands (mmclf.cli, serve) -> stages and workflows (mmclf.stages, mmclf.workflow, mmclf.demo) -> parts."""
    graph = import_graph()
    commands = {m for m in graph if m.startswith("mmclf.cli")} | {"mmclf.__main__"}
    stage_layer = {"mmclf.stages", "mmclf.workflow", "mmclf.demo"}
    for module, imported in graph.items():
        if module not in commands:
            assert not imported & commands, f"{module} imports a command module: {imported & commands}"
        if module not in commands | stage_layer:
            assert not imported & stage_layer, f"{module} (a part) imports {imported & stage_layer}"
    for path in PACKAGE.rglob("*.py"):
        if module_name(path).startswith("mmclf.cli"):
            continue
        source = path.read_text()
        assert "import argparse" not in source and "Namespace" not in source, f"{path} reads a command line"
