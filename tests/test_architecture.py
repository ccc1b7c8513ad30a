"""The structure holds: every import follows the floors of docs/ARCHITECTURE.md; the CLI's help and the catalogue
load without torch; no source file or function is far beyond the size the project allows."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "neuronscope"
#: Where the note says why: files and functions past the limits (none today).
LONG_FILES: dict[str, str] = {}
LONG_FUNCTIONS: dict[str, str] = {}


def allowed_imports() -> dict[str, set[str]]:
    """floor -> the floors it may import, from the table in docs/ARCHITECTURE.md."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    table = text.split("<!-- imports:", 1)[1].split("\n## ", 1)[0]
    out: dict[str, set[str]] = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        floors = {name.strip("`/").removesuffix(".py") for name in re.findall(r"`[^`]+`", cells[0])}
        may = cells[2]
        if may.startswith("every floor above"):
            allowed = {"*"}
        else:
            allowed = {name.strip() for name in may.split(",") if name.strip() not in ("", "—")}
        for floor in floors:
            out[floor] = allowed
    return out


def floor_of(path: Path) -> str:
    parts = path.relative_to(SOURCE).parts
    return "__init__" if parts == ("__init__.py",) else parts[0].removesuffix(".py")


def imported_floors(path: Path) -> set[str]:
    floors = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            if name == "neuronscope":
                floors.add("__init__")
            elif name.startswith("neuronscope."):
                floors.add(name.split(".")[1])
    return floors


def test_every_import_follows_the_floors_of_the_architecture_table():
    allowed = allowed_imports()
    every = set(allowed)
    assert {"results", "models", "runs", "workflows", "cli", "measure"} <= every
    problems = []
    for path in sorted(SOURCE.rglob("*.py")):
        floor = floor_of(path)
        assert floor in allowed, f"{path}: folder '{floor}' is not in docs/ARCHITECTURE.md's table"
        may = allowed[floor]
        for target in imported_floors(path) - {floor}:
            if "*" in may and target != "cli":
                continue
            if target not in may:
                problems.append(f"{path.relative_to(ROOT)} ({floor}) imports {target}")
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("argv", [["--help"], ["models"], ["models", "--json"], ["locate", "--help"],
                                  ["recipe", "--help"]])
def test_help_and_the_catalogue_import_neither_torch_nor_transformers(argv):
    code = ("import sys\nfrom neuronscope.cli.main import app\n"
            "try:\n    app.main(args=sys.argv[1:], prog_name='neuronscope')\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'numpy', 'matplotlib') if m in sys.modules]\n"
            "print('HEAVY', heavy, file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert "HEAVY []" in done.stderr, done.stderr[-2000:]
    assert done.stdout.strip(), done.stderr[-2000:]


def _docstring_lines(node: ast.AST) -> int:
    """Lines of a function's docstring (documentation does not count towards its length)."""
    body = getattr(node, "body", [])
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        return body[0].end_lineno - body[0].lineno + 1
    return 0


def test_no_file_or_function_is_far_beyond_the_limits():
    """Files of at most ~400 lines, functions of at most ~80 lines of code (their docstring not counted)."""
    long_files, long_functions = [], []
    for path in sorted(SOURCE.rglob("*.py")):
        relative = str(path.relative_to(SOURCE))
        lines = path.read_text(encoding="utf-8").count("\n")
        if lines > 420 and relative not in LONG_FILES:
            long_files.append(f"{relative}: {lines} lines")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1 - _docstring_lines(node)
                name = f"{relative}:{node.name}"
                if length > 85 and name not in LONG_FUNCTIONS:
                    long_functions.append(f"{name}: {length} lines")
    assert long_files == [] and long_functions == [], "\n".join(long_files + long_functions)
