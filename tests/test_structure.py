"""The structure the repository promises: imports flow one way (the core imports no operator, pipeline or
cluster code; operators import no pipeline or cluster code), no module imports itself round a cycle, and the
pipelines run stages they never name (the stage registry does)."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

from shardflow.operators.readers import ReaderConfig
from shardflow.operators.registry import STAGES
from support import REPO


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name, from the package-dir mapping."""
    mapping = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    found = {}
    for package, folder in mapping.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            name = ".".join([package, *parts]).removesuffix(".__init__")
            found[name] = path
    return found


def imports() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in it, functions included)."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
        graph[name] = {target for target in targets if target in known and target != name}
        graph[name] -= {target for target in graph[name] if name.startswith(target + ".")}  # its own parents
    return graph


def layer(module: str) -> str:
    if module == "shardflow.cli":
        return "cli"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ("operators", "pipelines", "cluster") else "core"


def test_imports_never_flow_upward() -> None:
    forbidden = {"core": {"operators", "pipelines", "cluster", "cli"}, "operators": {"pipelines", "cluster", "cli"}}
    upward = [
        (module, target)
        for module, targets in imports().items()
        for target in targets
        if layer(target) in forbidden.get(layer(module), set()) or (layer(target) == "cli" and module != target)
    ]
    assert upward == []


def test_no_module_imports_itself_through_others() -> None:
    graph = imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_pipelines_name_no_stage() -> None:
    names = [*STAGES.configs, *(stage.config.op for stage in STAGES.input_stages(ReaderConfig(paths=["x"])))]
    for pipeline in ("corpus.py", "refresh.py"):
        text = (REPO / "pipelines" / pipeline).read_text()
        assert [name for name in names if re.search(rf"\b{name}\b", text)] == [], pipeline


def test_the_graph_sees_the_imports_it_checks() -> None:
    graph = imports()
    assert "shardflow.operators.registry" in graph["shardflow.pipelines.corpus"]
    assert "shardflow.storage" in graph["shardflow.operators.readers"]
    assert "shardflow.pipelines.corpus" in graph["shardflow.cli"]  # a function-level import counts too
