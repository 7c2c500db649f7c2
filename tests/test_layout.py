"""The house shows its rooms (README "Architecture", ../shared/STYLE.md "The rooms").

import-linter (``lint-imports`` in ``make test``) checks who may import whom; these tests check what it cannot:
the top level stays small, every room says what it holds and may import, and the core's functions stay short
enough to read as the algorithm they implement.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PACKAGES = [REPO_ROOT / "patchflow", REPO_ROOT / "workflows", REPO_ROOT / "activities"]
MAX_TOP_LEVEL_MODULES = 10
MAX_CORE_FUNCTION_LINES = 100


def test_the_top_level_of_patchflow_holds_few_modules() -> None:
    modules = sorted(p.name for p in (REPO_ROOT / "patchflow").glob("*.py"))
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, modules


def _packages() -> list[Path]:
    found = []
    for top in PACKAGES:
        found += sorted(p.parent for p in top.rglob("__init__.py") if "__pycache__" not in p.parts)
    return found


@pytest.mark.parametrize("package", _packages(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_room_says_what_it_holds_and_may_import(package: Path) -> None:
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
    assert doc, f"{package / '__init__.py'} has no docstring"
    assert "may import" in doc.lower(), f"{package / '__init__.py'}: say what the room may import"


def _long_functions(root: Path, limit: int) -> list[str]:
    long = []
    for path in sorted(root.rglob("*.py")):
        where = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > limit:
                    long.append(f"{where}:{node.lineno} {node.name} ({lines} lines)")
    return long


def test_the_length_check_finds_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_CORE_FUNCTION_LINES + 1))
    (tmp_path / "m.py").write_text(f"def f() -> None:\n{body}\n")
    found = _long_functions(tmp_path, MAX_CORE_FUNCTION_LINES)
    assert (
        len(found) == 1 and "f (" in found[0] and found[0].endswith(f"({MAX_CORE_FUNCTION_LINES + 2} lines)")
    )


def test_no_function_in_the_core_is_too_long_to_read() -> None:
    assert _long_functions(REPO_ROOT / "patchflow" / "core", MAX_CORE_FUNCTION_LINES) == []
