"""dvc.yaml declares the code each stage runs and the params it reads: derived here from the stage script's
imports and from the params sections and keys it asks for."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import yaml

from helpers.repo import pipeline_env, snapshot_repo

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
# Modules that only check or record a run (the stages' preamble; the tracking package: MLflow, timing
# files; the wording of errors and exit codes; the launcher): editing them must not retrain a model, so
# dvc.yaml leaves them out and the walk stops there.
BOOKKEEPING_PACKAGES = ("synthvit.tracking",)
BOOKKEEPING = {"synthvit.pipeline", "synthvit.errors", "synthvit.training.launch"}


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
    assert not any("tracking" in path or "pipeline.py" in path for path in evaluate)
    generate = code_dependencies(REPO / "stages/generate_synthetic.py")
    assert "src/synthvit/synthetic/render.py" in generate and "src/synthvit/training/engine.py" not in generate


# Params a stage reads that do not change what it writes (dvc.yaml's header comment, docs/pipeline.md
# "What re-runs"): dvc.yaml leaves them out on purpose, so changing one re-runs nothing.
BOOKKEEPING_PARAMS = {
    "runtime.num_threads": "how many CPU threads compute",
    "runtime.compile": "torch.compile fuses the same operations",
    "runtime.launcher": "how training processes start; torchrun's take slices of the same batches",
    "data.num_workers": "how many threads decode the images",
    "data.download": "whether a missing copy may be fetched, not which images are used",
    "tracking": "MLflow names, model logging, the registry",
}
# evaluate and visualize load only the test split (data.images.load_split), which these keys do not shape.
TRAIN_SPLIT_ONLY = {"data.train_per_class", "data.loader", "data.val_fraction"}
NOT_READ = {"evaluate": TRAIN_SPLIT_ONLY, "visualize": TRAIN_SPLIT_ONLY}
# Params properties (config.Params) and the keys they read.
DERIVED = {"finetune_seed": {"seed", "finetune.seed"}}


def params_file() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def attribute_chain(node: ast.AST) -> list[str] | None:
    """["data", "val_fraction"] for `params.data.val_fraction` or `stage.params.data.val_fraction`; None otherwise."""
    names = []
    while isinstance(node, ast.Attribute):
        names.insert(0, node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id == "params":
        return names
    if isinstance(node, ast.Name) and node.id == "stage" and names[:1] == ["params"]:
        return names[1:]
    return None


def params_read(script: Path) -> set[str]:
    """The params the stage script asks for: the sections it hands `stage_context`, and every
    `params.<section>.<key>` it reads. A section used whole (`load_split(params.data, ...)`,
    `params.data.model_copy(...)`) stands for all its keys. The whole `params` handed to the library
    (engine.train, record_training) is not followed: the sections the stage asks stage_context for say what it
    reads."""
    tree = ast.parse(script.read_text())
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    sections = params_file()
    read = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "stage_context":
            read |= {arg.value for arg in node.args[1:] if isinstance(arg, ast.Constant)}
        elif isinstance(node, ast.Attribute) and id(node) not in inner:  # the whole chain, once
            chain = attribute_chain(node)
            if chain:
                keys = sections.get(chain[0])
                known = isinstance(keys, dict) and len(chain) > 1 and chain[1] in keys
                read.add(".".join(chain[:2]) if known else chain[0])
    return read


def required_params(name: str, read: set[str]) -> set[str]:
    """What dvc.yaml must declare for a stage reading `read`: sections as their keys, bookkeeping aside."""
    sections = params_file()
    keys = set()
    read = {key for item in read for key in DERIVED.get(item, {item})}
    for item in read:
        value = sections[item.split(".")[0]]
        keys |= {f"{item}.{key}" for key in value} if "." not in item and isinstance(value, dict) else {item}
    return {
        key
        for key in keys
        if key not in NOT_READ.get(name, ())
        and not any(key == b or key.startswith(b + ".") for b in BOOKKEEPING_PARAMS)
    }


def undeclared_params(dvc_stages: dict) -> dict:
    """{stage: params its code reads that its dvc.yaml entry does not declare (as a key or its section)}."""
    missing = {}
    for name, stage in dvc_stages.items():
        declared = stage.get("params", [])
        assert all(isinstance(p, str) for p in declared), f"{name}: params from another file are not derived here"
        required = required_params(name, params_read(REPO / f"stages/{name}.py"))
        lacking = sorted(k for k in required if k not in declared and k.split(".")[0] not in declared)
        if lacking:
            missing[name] = lacking
    return missing


def test_every_stage_declares_the_params_its_code_reads():
    missing = undeclared_params(stages())
    assert not missing, f"dvc.yaml stages miss params they read (a change would re-run nothing): {missing}"


def test_the_params_walk_sees_sections_keys_and_whole_sections():
    assert params_read(REPO / "stages/pretrain.py") >= {"seed", "runtime", "model", "pretrain", "data.num_workers"}
    # visualize hands stage_context only its own section; the rest it reads key by key, or whole (load_split).
    visualize = params_read(REPO / "stages/visualize.py")
    assert {"visualize", "visualize.num_misclassified", "model.img_size", "finetune.init", "data"} <= visualize
    assert not {"model", "finetune", "runtime"} & visualize
    # generate_synthetic reads through stage.params, not a local `params`.
    assert params_read(REPO / "stages/generate_synthetic.py") >= {"seed", "synthetic", "synthetic.store"}
    assert "data.val_fraction" in params_read(REPO / "stages/finetune.py")
    assert {"seed", "finetune.seed"} <= required_params("finetune", {"finetune_seed"})
    # Deleting `- pretrain` from the pretrain stage's params is caught, key by key.
    broken = stages()
    broken["pretrain"]["params"].remove("pretrain")
    assert "pretrain.lr" in undeclared_params(broken)["pretrain"]
    assert set(undeclared_params(broken)) == {"pretrain"}


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
