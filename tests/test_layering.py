"""The project's modules import downward only, and never in a circle.

Read from the source with ``ast`` (nothing is imported), counting imports inside functions too:
a lazy import still runs, so it still ties the two modules together. A module may import any
module of its own layer or of a layer below; the layers are :data:`LAYERS`, lowest first.
"""
from __future__ import annotations

import ast
from pathlib import Path

from import_statements import import_statements

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "search", "registry", "crackops")

# Lowest first. An entry ending in "/" is a folder (every module under it), otherwise one file;
# a module belongs to its longest matching entry, and every module must have one.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("leaf utilities", ("pipeline/__init__.py", "pipeline/params.py", "pipeline/errors.py", "pipeline/atomic.py",
                        "pipeline/liveness.py", "pipeline/eval_schema.py", "pipeline/dblock.py", "pipeline/visualize.py",
                        "pipeline/recipes/")),
    ("components", ("pipeline/data/", "pipeline/losses/", "pipeline/metrics/", "pipeline/models/")),
    ("tuning", ("pipeline/tuning/",)),
    ("training", ("pipeline/training/", "pipeline/distill/")),
    ("evaluation and inference", ("pipeline/evaluation/", "pipeline/inference/", "pipeline/results.py")),
    ("export", ("pipeline/export/",)),
    ("tracking", ("pipeline/tracking/",)),
    ("search and registry", ("search/", "registry/")),
    ("command line", ("crackops/",)),
)


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = module_files()


def imports_of(name: str, path: Path) -> set[str]:
    """The project modules ``name`` imports anywhere in its file; ``from a import b`` names the
    module ``a.b`` when there is one, else ``a``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    named = set()
    for module, names in import_statements(ast.parse(path.read_text()), package):
        if not names:
            named.add(module)
        named.update(f"{module}.{item}" if f"{module}.{item}" in MODULES else module for item in names)
    resolved = set()
    for target in named:
        while target and target not in MODULES:  # `import a.b.c` where c is a name: the module a.b
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def layer_of(name: str) -> int | None:
    path = MODULES[name].relative_to(ROOT).as_posix()
    matches = [(len(entry), rank) for rank, (_, entries) in enumerate(LAYERS) for entry in entries
               if path == entry or entry.endswith("/") and path.startswith(entry)]
    return max(matches)[1] if matches else None


def test_every_module_has_a_layer() -> None:
    assert not [name for name in MODULES if layer_of(name) is None], "add these modules to LAYERS"


def test_no_module_imports_a_higher_layer() -> None:
    upward = sorted(f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
                    for name, targets in GRAPH.items() for target in targets
                    if layer_of(name) is not None and layer_of(target) is not None
                    and layer_of(target) > layer_of(name))
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    found = cycles(GRAPH)
    assert not found, "modules that import each other (directly or round a loop):\n" + "\n".join(
        " <-> ".join(component) for component in found)


def test_the_checker_sees_an_upward_import_and_a_cycle() -> None:
    # The rules above pass vacuously if the graph is empty or the cycle search is blind.
    assert "pipeline.training.batches" in GRAPH["pipeline.training.loop"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
