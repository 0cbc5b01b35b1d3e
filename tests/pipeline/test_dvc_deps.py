"""dvc.yaml declares the code each stage runs: derived here from the stage script's imports."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import yaml

from helpers.repo import pipeline_env, snapshot_repo

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
# Modules that only record or report a run (the tracking package: MLflow, timing files; the
# wording of errors and exit codes; the launcher): editing them must not retrain a model, so
# dvc.yaml leaves them out and the walk stops there.
BOOKKEEPING_PACKAGES = ("synthvit.tracking",)
BOOKKEEPING = {"synthvit.errors", "synthvit.training.launch"}


def is_bookkeeping(name: str) -> bool:
    return name in BOOKKEEPING or any(name == p or name.startswith(p + ".") for p in BOOKKEEPING_PACKAGES)


def module_file(name: str) -> Path | None:
    """src/synthvit/x.py or src/synthvit/x/__init__.py for a dotted synthvit module name."""
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, package: str) -> set[str]:
    """synthvit modules that the file imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y inside a package
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names if module_file(f"{base}.{alias.name}")}
    return {name for name in found if name.split(".")[0] == "synthvit" and module_file(name)}


def code_dependencies(script: Path) -> set[str]:
    """Repository paths of every synthvit module the script reaches, transitively, bookkeeping aside."""
    seen: set[str] = set()
    todo = imported_modules(script, "")
    while todo:
        name = todo.pop()
        if name in seen or is_bookkeeping(name):
            continue
        seen.add(name)
        path = module_file(name)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        todo |= imported_modules(path, package)
    return {str(module_file(name).relative_to(REPO)) for name in seen}


def covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


def stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_every_stage_declares_the_code_it_imports():
    missing = {}
    for name, stage in stages().items():
        script = REPO / f"stages/{name}.py"
        assert f"stages/{name}.py" in stage["deps"], name
        lacking = sorted(p for p in code_dependencies(script) if not covered(p, stage["deps"]))
        if lacking:
            missing[name] = lacking
    assert not missing, f"dvc.yaml stages miss code they import (add to deps): {missing}"


def declared_files(dep: str) -> list[str]:
    """The Python files a declared dependency stands for: the file, or every module in the folder."""
    path = REPO / dep
    return sorted(str(p.relative_to(REPO)) for p in path.rglob("*.py")) if path.is_dir() else [dep]


def test_no_stage_declares_code_it_does_not_run():
    """Every declared code file, and every module inside a declared folder, is code the stage imports:
    a module a stage never runs (a benchmark beside the generator) would re-run it when edited."""
    extra = {}
    for name, stage in stages().items():
        code = code_dependencies(REPO / f"stages/{name}.py") | {f"stages/{name}.py"}
        declared = [d for d in stage["deps"] if d.startswith(("src/", "stages/"))]
        unused = [f for d in declared for f in declared_files(d) if f not in code]
        if unused:
            extra[name] = unused
    assert not extra, (
        f"dvc.yaml stages declare code they never import (a change there re-runs them for nothing): {extra}"
    )


def test_the_walk_sees_imports_inside_functions_and_packages():
    # evaluate reaches augment only through inference, plots through calibration.
    evaluate = code_dependencies(REPO / "stages/evaluate.py")
    assert {
        "src/synthvit/evaluation/plots.py",
        "src/synthvit/data/augment.py",
        "src/synthvit/evaluation/calibration.py",
        "src/synthvit/evaluation/__init__.py",
    } <= evaluate
    assert not any("tracking" in path for path in evaluate)
    generate = code_dependencies(REPO / "stages/generate_synthetic.py")
    assert "src/synthvit/synthetic/render.py" in generate and "src/synthvit/training/engine.py" not in generate


def test_bookkeeping_params_are_not_stage_params():
    for name, stage in stages().items():
        params = stage.get("params", [])
        for key in (
            "tracking",
            "runtime",
            "data",
            "runtime.num_threads",
            "runtime.compile",
            "runtime.launcher",
            "data.num_workers",
            "data.download",
            "tracking.experiment_name",
        ):
            assert key not in params, (name, key)
        assert "${" not in stage["cmd"], f"{name}: an interpolated command re-runs the stage when the value changes"


def test_compiled_and_byte_code_caches_do_not_change_code_deps(tmp_path):
    # Python writes __pycache__/*.pyc and numba its kernels' caches beside the sources on first import.
    repo = snapshot_repo(tmp_path / "repo")
    env = pipeline_env(repo)

    def dvc(*args):
        return subprocess.run(["dvc", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout

    dvc("stage", "add", "-n", "probe", "-d", "src/synthvit/synthetic", "-o", "probe.txt", "echo x > probe.txt")
    dvc("repro", "probe")
    cache = repo / "src/synthvit/synthetic/__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "kernels.chaos_steps-1.py311.nbi").write_bytes(b"compiled")
    (cache / "render.cpython-311.pyc").write_bytes(b"byte code")
    assert "up to date" in dvc("status", "probe")
    (repo / "src/synthvit/synthetic/render.py").write_text("# changed\n", encoding="utf-8")
    assert "modified" in dvc("status", "probe")  # the probe can fail: a source change shows
