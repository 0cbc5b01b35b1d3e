"""The package's shape: a map a newcomer can read, layers that hold, no import cycles, imports at the top."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

from helpers.repo import REPO

PACKAGE = REPO / "src" / "synthvit"


def tracked_entries() -> list[str]:
    files = subprocess.run(["git", "ls-files", "src/synthvit"], cwd=REPO, capture_output=True, text=True, check=True)
    names = {line.split("/")[2] for line in files.stdout.splitlines()}
    untracked = {p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}
    return sorted(names | untracked)


def test_at_most_thirteen_entries_and_the_package_docstring_maps_each():
    entries = tracked_entries()
    assert len(entries) <= 13, entries
    package_map = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text()))
    for entry in entries:
        if entry != "__init__.py":
            shown = entry if entry.endswith(".py") else f"{entry}/"
            assert f"\n    {shown}" in package_map, f"synthvit/__init__.py's map does not name {shown}"


def import_cycles(graph: grimp.ImportGraph) -> list[tuple[str, str]]:
    """Each direct import (importer, imported) through which the imported module leads back to its importer."""
    return sorted(
        (module, target)
        for module in graph.modules
        for target in graph.find_modules_directly_imported_by(module)
        if graph.chain_exists(importer=target, imported=module)
    )


def test_no_import_cycles():
    cycles = import_cycles(grimp.build_graph("synthvit"))
    assert not cycles, f"imports that close a cycle: {cycles}"


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for importer, imported in [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")]:
        graph.add_import(importer=importer, imported=imported)
    assert import_cycles(graph) == [("a", "b"), ("b", "c"), ("c", "a")]


def test_layers_hold():
    """pyproject.toml's import-linter contracts: commands, the stages' preamble and tracking above training,
    above evaluation, above data, above the generator, above the shared modules; tracking reads no params,
    data, models or training."""
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_imports_inside_functions_say_why():
    """Imports belong at the top; one inside a function (an optional extra, a measured start-up cost)
    carries a comment on its line or the line above saying why."""
    silent = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        here, above = lines[inner.lineno - 1], lines[inner.lineno - 2]
                        if "#" not in here and not above.strip().startswith("#"):
                            silent.append(f"{path.relative_to(REPO)}:{inner.lineno}: {here.strip()}")
    assert not silent, silent
