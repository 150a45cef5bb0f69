"""The walls of STYLE.md: plugins import only the core contracts, never the CLI, the run package or
the executors (they reach a run through ``mkeval.run``, as a third-party plugin would)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("mkeval.cli", "mkeval.cli_parser", "mkeval.progress", "mkeval.runner")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def test_plugins_do_not_import_the_cli_the_run_package_or_the_executors():
    files = sorted((ROOT / "plugins").rglob("*.py")) + sorted((ROOT / "docs" / "examples").rglob("*.py"))
    assert len(files) > 20  # the first-party plugins and the example plugin are scanned
    bad = [f"{path.relative_to(ROOT)}:{line}: {name}" for path in files for line, name in imported_modules(path)
           if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)]
    assert not bad, "\n".join(bad)


def test_the_scan_sees_a_forbidden_import(tmp_path):
    path = tmp_path / "p.py"
    path.write_text("import os\nfrom mkeval.runner.ray_executor import start_local\nfrom mkeval import run\n")
    names = [n for _, n in imported_modules(path)]
    assert "mkeval.runner.ray_executor" in names and "mkeval.run" in names
