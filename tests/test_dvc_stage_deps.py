"""`dvc.yaml` lists exactly the code each stage runs, so DVC reruns a stage whenever its code changes
and never because of code it does not run.

The code a stage runs is found from the source: the imports of its `crackops` command's function
in crackops/cli.py, then every project module those import (at module level or inside functions:
either can run), transitively. The dispatcher crackops/cli.py itself is left out: it parses
arguments and calls the stage's functions, so a change there (a new subcommand's help) must not
rerun every stage.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from import_statements import import_statements

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "search", "registry")
DISPATCHER = "crackops/cli.py"


def module_file(name: str) -> Path | None:
    path = ROOT.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def imported_modules(tree: ast.AST, package: str) -> set[str]:
    """Project modules named by the imports in ``tree`` (``package``: where relative imports start),
    with every package on the way (importing a.b.c runs a/__init__ and a/b/__init__ too)."""
    names = set()
    for module, imported in import_statements(tree, package):
        names.add(module)
        names.update(f"{module}.{item}" for item in imported)  # a submodule, or just a name
    found = set()
    for name in names:
        parts = name.split(".")
        if parts[0] in PACKAGES:
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if module_file(".".join(parts[:i])))
    return found


def code_of(command: str) -> set[str]:
    """Files (repo-relative) of every project module the stage command can run."""
    cli = ast.parse((ROOT / DISPATCHER).read_text())
    function = next(node for node in cli.body if isinstance(node, ast.FunctionDef) and any(
        isinstance(d, ast.Call) and getattr(d.func, "id", "") == "command" and d.args[0].value == command
        for d in node.decorator_list))
    todo, seen = list(imported_modules(ast.Module(body=function.body, type_ignores=[]), "crackops")), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        todo += imported_modules(ast.parse(path.read_text()), package)
    return {module_file(name).relative_to(ROOT).as_posix() for name in seen}


def _covers(dep: str, path: str) -> bool:
    return path == dep or path.startswith(dep.rstrip("/") + "/")


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_stage_depends_on_exactly_the_code_it_runs(stage: str) -> None:
    spec = STAGES[stage]
    command = spec["cmd"].split()[1]
    code = code_of(command) - {DISPATCHER}
    code_deps = [dep for dep in spec.get("deps", []) if dep.split("/")[0] in PACKAGES]
    missing = sorted(path for path in code if not any(_covers(dep, path) for dep in code_deps))
    unused = sorted(dep for dep in code_deps if not any(_covers(dep, path) for path in code))
    assert not missing, f"dvc.yaml stage {stage!r} runs code it does not list in deps: {missing}"
    assert not unused, f"dvc.yaml stage {stage!r} lists code it never runs: {unused}"
