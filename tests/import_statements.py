"""The import statements of a module's source, read with ``ast`` (nothing is imported).

Shared by tests/test_layering.py and tests/test_dvc_stage_deps.py, which resolve the names by
rules of their own: the layering counts ``from a import b`` as an import of ``a.b`` when that is a
module, the stage dependencies count every package on the way as well.
"""
from __future__ import annotations

import ast
from typing import Iterator


def import_statements(tree: ast.AST, package: str) -> Iterator[tuple[str, list[str]]]:
    """``(module, names)`` for each import anywhere in ``tree``, inside functions too (a lazy import
    still runs): ``import a.b`` gives ``("a.b", [])``, ``from .x import y, z`` the absolute module
    ``x`` under ``package`` with ``["y", "z"]``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            yield base, [alias.name for alias in node.names]
