"""The bounds that keep each concept with one owner (issue 25): no module of hopt_cli over 450 lines, no class
over 30 methods. Past them, a module or a class is holding more than one thing: split it by what it holds."""
from __future__ import annotations

import ast

from tests.conftest import REPO

MAX_LINES, MAX_METHODS = 450, 30


def test_no_module_over_450_lines_and_no_class_over_30_methods():
    too_long, too_wide = [], []
    for path in sorted((REPO / "hopt_cli").rglob("*.py")):
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_LINES:
            too_long.append(f"{path.relative_to(REPO)}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                methods = sum(isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) for item in node.body)
                if methods > MAX_METHODS:
                    too_wide.append(f"{path.relative_to(REPO)}: {node.name} has {methods} methods")
    assert too_long == [] and too_wide == []
