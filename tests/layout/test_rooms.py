"""The house rules of the package's layout, read from the code as `scripts/rooms.py` reads it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "lora_space"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_rooms_import_each_other_without_circles_and_few_modules_are_loose():
    report = subprocess.run([sys.executable, "scripts/rooms.py"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "circles 0, circles inside a room 0" in report, report
    loose = [path for path in PACKAGE.glob("*.py") if path.name != "__init__.py"]
    assert len(loose) <= 6, loose


def test_no_module_is_over_450_lines():
    long = {path.relative_to(REPO).as_posix(): n for path in PACKAGE.rglob("*.py") if (n := len(path.read_text().splitlines())) > 450}
    assert not long, long


def test_only_the_ui_imports_gradio_and_the_ui_imports_no_torch():
    for path in PACKAGE.rglob("*.py"):
        names = imported_modules(path)
        in_ui = path.relative_to(PACKAGE).parts[0] == "ui"
        if not in_ui:
            assert not any(name.split(".")[0] == "gradio" for name in names), path
        else:
            assert not any(name.split(".")[0] in {"torch", "diffusers", "peft"} for name in names), path
            assert "lora_space.generate.engine" not in names, path
