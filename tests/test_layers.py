"""Imports inside attnlab point down the layers and never form a cycle (DESIGN.md sections 4 and 8).

The import graph is read from the source (AST), not by importing: every ``import`` and ``from``
statement of every module under ``src/attnlab``, at module level and inside functions, with
relative imports resolved. Layers, lowest first::

    0  utilities: _checks, _strict, _argparse, io, registry, provenance, profiling, stats (and the
       lazy package root attnlab/__init__, which imports nothing at module level)
    1  kernels, problem (the validated call), methods (capability records)
    2  backends
    3  functional
    4  nn, approx, metrics, models, testing
    5  data, config, checkpoints, run_plan, train, capture, integrations
    6  studies
    7  cli, __main__

A module may import its own layer or a lower one; a package ``__init__`` may import anything
inside its own package (its re-exports). Module-level imports (those that run on import, outside
``if TYPE_CHECKING:``) must not form a cycle, and top-level modules and packages must not import
each other in a circle by any import at all. A new top-level module must be given a layer here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "attnlab"

LAYERS: dict[str, int] = {
    "": 0, "_checks": 0, "_strict": 0, "_argparse": 0, "io": 0, "registry": 0, "provenance": 0, "profiling": 0,
    "stats": 0, "_problem_checks": 0,
    "kernels": 1, "problem": 1, "signature": 1, "methods": 1,
    "backends": 2,
    "functional": 3,
    "nn": 4, "approx": 4, "metrics": 4, "models": 4, "testing": 4,
    "data": 5, "config": 5, "checkpoints": 5, "run_plan": 5, "train": 5, "capture": 5, "integrations": 5,
    "studies": 6,
    "cli": 7, "__main__": 7,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SRC / ROOT).rglob("*.py"))}


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(importer: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The attnlab modules an import statement loads (the most specific existing module per name)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        if node.level:
            base = importer.split(".")
            base = base[: len(base) - node.level + (1 if _is_package(importer) else 0)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        targets = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in MODULES else prefix
                   for alias in node.names]
    found = []
    for target in targets:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target.split(".")[0] == ROOT and target not in found:
            found.append(target)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str) -> list[tuple[str, int, str]]:
    """(imported module, line, "module" | "type-checking" | "function") for every import of ``name``."""
    out: list[tuple[str, int, str]] = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                out.extend((target, child.lineno, where) for target in _resolve(name, child))
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, "function")
            elif isinstance(child, ast.If) and _is_type_checking(child.test) and where == "module":
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), "type-checking")
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), "module")
            else:
                visit(child, where)

    visit(ast.parse(MODULES[name].read_text(), filename=str(MODULES[name])), "module")
    return out


def layer(name: str) -> int:
    """The layer of an attnlab module (that of its top-level module or package)."""
    top = name.split(".")[1] if "." in name else ""
    if top not in LAYERS:
        raise KeyError(f"{name} has no layer: add {top!r} to tests/test_layers.py LAYERS")
    return LAYERS[top]


def _within(package: str, name: str) -> bool:
    return name.startswith(package + ".")


def upward_imports() -> list[str]:
    """Every import of a module from a higher layer, as 'importer -> imported (file:line, kind)'."""
    bad = []
    for name in MODULES:
        for target, line, where in _imports(name):
            if _is_package(name) and _within(name, target):
                continue  # a package's re-exports
            if layer(target) > layer(name):
                bad.append(f"{name} (layer {layer(name)}) -> {target} (layer {layer(target)}) "
                           f"[{MODULES[name].relative_to(SRC.parent)}:{line}, {where}-level]")
    return bad


def _unit(name: str) -> str:
    """The top-level module or package of ``name`` (``attnlab.data.tasks.recall`` -> ``attnlab.data``)."""
    return ".".join(name.split(".")[:2])


def module_level_cycles() -> list[list[str]]:
    """The cycles (strongly connected components) of the graph of module-level imports."""
    return _cycles({name: sorted({t for t, _, where in _imports(name) if where == "module"}) for name in MODULES})


def unit_cycles() -> list[list[str]]:
    """The cycles between top-level modules and packages, through imports of any kind (module level,
    ``TYPE_CHECKING``, inside functions); the lazy package root is left out (its re-exports)."""
    graph: dict[str, set[str]] = {_unit(name): set() for name in MODULES if name != ROOT}
    for name in MODULES:
        if name != ROOT:
            graph[_unit(name)] |= {_unit(t) for t, _, _ in _imports(name) if t != ROOT and _unit(t) != _unit(name)}
    return _cycles({k: sorted(v) for k, v in graph.items()})


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """The strongly connected components of ``graph`` with more than one node, or a self-loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
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
            if len(component) > 1 or v in graph[v]:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            strongconnect(v)
    return cycles


def test_the_graph_is_read():
    """The walker sees what it must: relative, absolute, function-level and TYPE_CHECKING imports."""
    train = {(t, where) for t, _, where in _imports("attnlab.train")}
    assert ("attnlab.checkpoints", "module") in train and ("attnlab._argparse", "function") in train
    sources = {(t, where) for t, _, where in _imports("attnlab.data.sources")}
    assert ("attnlab.data.config", "type-checking") in sources and ("attnlab.data.tasks", "function") in sources
    assert ("attnlab.models", "type-checking") in sources
    assert ("attnlab.data.tasks._base", "module") in {(t, w) for t, _, w in _imports("attnlab.data.tasks.recall")}
    assert len(MODULES) > 40 and all(name.startswith(ROOT) for name in MODULES)


def test_every_module_has_a_layer():
    missing = sorted({_unit(name) for name in MODULES if name != ROOT and _unit(name).split(".")[1] not in LAYERS})
    assert missing == [], f"give these modules a layer in tests/test_layers.py: {missing}"


def test_imports_point_down():
    bad = upward_imports()
    assert bad == [], "imports from a lower layer into a higher one:\n" + "\n".join(bad)


def test_no_import_cycle_at_module_level():
    cycles = module_level_cycles()
    assert cycles == [], "module-level import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_import_cycle_between_top_level_modules():
    """``train`` and ``data.sources`` used to import each other (issue 11); even a ``TYPE_CHECKING``
    or function-level import back makes two modules one tangle."""
    cycles = unit_cycles()
    assert cycles == [], "import cycles between top-level modules:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", ["attnlab.data.config", "attnlab.data.sources", "attnlab.data.tasks"])
def test_data_imports_neither_train_nor_models_at_module_level(module):
    """DataConfig and the sources stand below the training loop (issue 11)."""
    names = [name for name in MODULES if name == module or _within(module, name)]
    reached = {t for name in names for t, _, where in _imports(name) if where == "module"}
    assert not {t for t in reached if t.split(".")[1] in ("train", "config", "models", "run_plan")}, reached
