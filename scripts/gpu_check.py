#!/usr/bin/env python3
"""`make gpu-check`: synthvit's GPU path, proven in one call of at most 9 minutes (docs/gpu-check.md).

Runs, in order, each step in its own processes under a time limit, and keeps what each
printed even when a later one fails or runs out of time:

    environment  Python, torch, CUDA devices, driver (nvidia-smi), CPU
    install      the carried wheels that are missing (--wheels), then which of MLflow, pydantic, DVC import
    data         the CIFAR-10 ImageFolder: a folder as is, or a .tar.xz unpacked (--data)
    synthetic    (a) `synthvit bench synthetic`: the renderer's torch port on this device against numpy, byte for byte
    train        (b) `synthvit bench train`: bare timm step, engine, plain DataLoader loop; light and full augmentation
    pretrain     (c) `synthvit bench pretrain`: batches rendered from formulas against the same images preloaded
    pipeline     (d) every stage of recipes.yaml's gpu-check recipe, MLflow on SQLite, in a copy of the repository:
                 `dvc exp run` when DVC imports and git is there, else the stages of dvc.yaml in order
    ddp          (e) the finetune stage under a 2-process torchrun, when 2 CUDA devices are visible

Writes OUT/gpu-check.json (per step: status ok|failed|timeout|skipped, seconds, reason, the
figures parsed from its output; the machine; the targets) after every step, and
OUT/gpu-check.log (everything the steps printed). OUT: --out, else $OUT, else gpu-check/.
Without CUDA the steps run at test size on the CPU (what tests/pipeline/test_gpu_check.py
checks) and the CUDA-only ones are skipped for "no CUDA device". Needs only the standard
library and PyYAML in this process; the steps run with this interpreter.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# Seconds each step may take at most (estimates for an H200, not yet measured; the run stops at --budget):
# train, the longest (5 compiled models), must leave the pipeline its time.
LIMITS = {
    "environment": 60,
    "install": 120,
    "data": 90,
    "synthetic": 120,
    "train": 210,
    "pretrain": 150,
    "pipeline": 200,
    "ddp": 120,
}
WHEELS_DEFAULT = REPO / ".gpu" / "wheels"  # what `make gpu-pack` fills
DATA_DEFAULTS = (REPO / ".gpu" / "cifar10.tar.xz", REPO.parent / "shared" / "datasets" / "cifar10")
# What the steps import that a CUDA machine image may lack (the carried wheels bring them): the
# pipeline needs the first ones (MLflow's store on SQLite, its PyTorch flavour for the model), DVC is optional.
NEEDED = ("pydantic", "mlflow", "mlflow.pytorch", "sqlalchemy", "alembic", "cloudpickle")
OPTIONAL_IMPORTS = ("dvc",)
TARGETS = {  # docs/gpu-check.md says where each comes from
    "engine_over_bare_light": 0.85,
    "engine_over_plain_light": 3.0,
    "engine_over_plain_full": 3.0,
    "engine_light_img_per_s": 50_000,
}

PROBE = """
import json, os, platform, torch
cuda = torch.cuda.is_available()
count = torch.cuda.device_count() if cuda else 0
print("environment: " + json.dumps({
    "python": platform.python_version(), "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
    "cuda_available": cuda, "device_count": count,
    "devices": [torch.cuda.get_device_name(i) for i in range(count)],
    "capability": [".".join(map(str, torch.cuda.get_device_capability(i))) for i in range(count)],
    "torch_threads": torch.get_num_threads(),
}))
"""
IMPORTS = """
import importlib, json, sys
needed, optional = %r, %r
found = {}
for name in needed + optional:
    try:
        found[name] = getattr(importlib.import_module(name), "__version__", "ok")
    except Exception as exc:  # any failure to import is the answer
        found[name] = "missing: " + f"{type(exc).__name__}: {exc}"[:300]
print("imports: " + json.dumps(found))
missing = [f"{name} ({found[name][9:]})" for name in needed if found[name].startswith("missing")]
if missing:
    sys.exit("missing: " + "; ".join(missing))
"""
GENERATE = """
import sys
from synthvit.config import SyntheticConfig
from synthvit.synthetic.generate import generate_dataset
out, classes, instances, size, points = sys.argv[1:]
cfg = SyntheticConfig(num_classes=int(classes), instances_per_class=int(instances), image_size=int(size),
                      num_points=int(points))
manifest = generate_dataset(cfg, 0, out)
print(f"generated {len(manifest['classes'])} categories x {instances} instances into {out}")
"""

# Sizes: CUDA (the real check) and quick (a CPU at test size; --quick forces it on CUDA too).
SIZES = {
    "cuda": {
        "synthetic": {
            "faithful": ["--repeats", "2", "--reference-images", "1"],  # FractalDB's 362 px, 200k points
            "training": ["--image-size", "64", "--points", "10000", "--patch", "full", "--repeats", "2",
                         "--reference-images", "1"],  # params.yaml's render
        },
        "train": ["--images", "50000", "--augment", "both"],  # --compile when a C compiler is there
        "fractals": ["100", "100", "64", "10000"],  # categories, instances, image size, points
        "pretrain": ["--images", "8192", "--repeats", "2"],
        "recipe": "gpu-check",
    },
    "quick": {
        "synthetic": {
            "training": ["--image-size", "32", "--points", "2000", "--patch", "full", "--fast-images", "8",
                         "--reference-images", "1", "--repeats", "1", "--workers", "1"],
        },
        "train": ["--images", "64", "--batch-size", "16", "--depth", "1", "--embed-dim", "32", "--heads", "2",
                  "--workers", "0", "--augment", "both", "--device", "cpu"],
        "fractals": ["3", "4", "32", "2000"],
        "pretrain": ["--images", "8", "--repeats", "1", "-S", "model.img_size=16", "-S", "model.depth=1",
                     "-S", "model.embed_dim=32", "-S", "model.num_heads=2", "-S", "pretrain.batch_size=4",
                     "-S", "data.num_workers=0", "-S", "runtime.device=cpu"],
        "recipe": "gpu-check-quick",
    },
}  # fmt: skip


class Check:
    """The report and the log of one run, and the clock every step's limit is taken from."""

    def __init__(self, out: Path, budget: float, argv: list[str]):
        out.mkdir(parents=True, exist_ok=True)
        self.json_path, self.log_path = out / "gpu-check.json", out / "gpu-check.log"
        self.log_path.write_text("")
        self.deadline = time.monotonic() + budget
        self.started = time.monotonic()
        self.report = {
            "command": " ".join(shlex.quote(a) for a in argv),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "budget_s": budget,
            "machine": machine(),
            "steps": {},
        }
        self.write()

    def log(self, text: str) -> None:
        with self.log_path.open("a") as log:
            log.write(text)

    def write(self) -> None:
        self.report["wall_s"] = round(time.monotonic() - self.started, 1)
        self.report["targets"] = targets(self.report)
        self.json_path.write_text(json.dumps(self.report, indent=2) + "\n")

    def skip(self, name: str, reason: str) -> dict:
        return self.record(name, {"status": "skipped", "seconds": 0.0, "reason": reason, "figures": {}})

    def record(self, name: str, result: dict) -> dict:
        self.report["steps"][name] = result
        self.write()
        line = f"[gpu-check] {name}: {result['status']} ({result['seconds']:.0f} s)"
        print(line + (f": {result['reason']}" if result["reason"] else ""), flush=True)
        self.log(line + "\n")
        return result

    def step(self, name: str, commands: list, env: dict, cwd: Path = REPO, parse=None) -> dict:
        """Run `commands` in order, all within the step's limit: argument lists as processes, whose output
        goes to the log as it comes; callables in this process. `parse(outputs)`: the figures."""
        limit = min(LIMITS[name], self.deadline - time.monotonic())
        if limit < 5:
            return self.skip(name, f"out of time: the --budget of {self.report['budget_s']:.0f} s is spent")
        self.log(f"\n===== {name} =====\n")
        started = time.monotonic()
        status, reason, outputs = "ok", "", []
        for command in commands:
            left = started + limit - time.monotonic()
            if callable(command):  # work in this process; what it returns, if anything, runs next
                try:
                    command = command()
                except Exception as exc:  # noqa: BLE001 - a failed preparation fails this step, not the run
                    status, reason = "failed", f"{type(exc).__name__}: {exc}"
                    self.log(f"{reason}\n")
                    break
                if command is None:
                    continue
            self.log(f"$ {shlex.join(str(c) for c in command)}\n")
            offset = self.log_path.stat().st_size
            code = run_logged(command, self.log_path, env, cwd, left)
            with self.log_path.open(errors="replace") as log:
                log.seek(offset)
                outputs.append(log.read())
            if code is None:
                status, reason = "timeout", f"stopped after {limit:.0f} s: {describe(command)}"
                break
            if code:
                last = next((line for line in reversed(outputs[-1].splitlines()) if line.strip()), "")
                status, reason = "failed", f"exit {code}: {describe(command)}; {last[:300]}"
                break
        result = {"status": status, "seconds": round(time.monotonic() - started, 1), "reason": reason}
        try:
            result["figures"] = parse(outputs) if parse else {}
        except Exception as exc:  # noqa: BLE001 - a figure that did not parse must not lose the step's status
            result["figures"] = {"parse_error": f"{type(exc).__name__}: {exc}"}
        return self.record(name, result)


def describe(command: list) -> str:
    """A command as a reason quotes it: short, a `python -c` program as <code>."""
    return shlex.join("<code>" if "\n" in str(c) else str(c) for c in command)[:200]


def run_logged(command: list, log_path: Path, env: dict, cwd: Path, timeout: float) -> int | None:
    """Exit code of `command` (output appended to the log), or None when it ran out of time (then its
    whole process group is ended: DataLoader workers, torchrun's children, DVC's stages)."""
    with log_path.open("a") as log:
        process = subprocess.Popen(
            [str(c) for c in command], stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True
        )
        try:
            return process.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                try:
                    os.killpg(process.pid, sig)
                    process.wait(timeout=wait)
                    break
                except (subprocess.TimeoutExpired, ProcessLookupError):
                    continue
            return None


def machine() -> dict:
    """What this process can tell without torch: CPU, cores, Python, the GPUs and driver per nvidia-smi."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"hostname": socket.gethostname(), "cpu": cpu, "cpu_cores": os.cpu_count(), "python": sys.version.split()[0]}
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        try:
            rows = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
            info["nvidia_smi"] = [dict(zip(("name", "driver", "memory"), map(str.strip, r.split(",")))) for r in rows]
        except (OSError, subprocess.TimeoutExpired) as exc:
            info["nvidia_smi"] = f"failed: {exc}"
    else:
        info["nvidia_smi"] = "not found"
    return info


# ---- parsing what the benches print ----------------------------------------------------------


def numbers(pattern: str, text: str) -> list[tuple]:
    return re.findall(pattern, text, flags=re.MULTILINE)


def parse_json_line(prefix: str, outputs: list[str]) -> dict:
    line = next(line for line in "".join(outputs).splitlines() if line.startswith(prefix))
    return json.loads(line[len(prefix) :])


def parse_synthetic(presets: list[str]):
    def parse(outputs: list[str]) -> dict:
        figures = {}
        for preset, text in zip(presets, outputs):
            rates = {label: float(rate) for label, rate in numbers(r"^([a-z][^:\n]*):\s+([\d.]+) img/s", text)}
            same = numbers(
                r"^torch port on (\w+) gives numpy's bytes and converged flags \((\d+) images\): (\w+)", text
            )
            figures[preset] = {"img_per_s": rates}
            if same:
                device, count, verdict = same[-1]
                figures[preset].update(device=device, images_compared=int(count), same_bytes=verdict == "yes")
        return figures

    return parse


def parse_train(outputs: list[str]) -> dict:
    text = "".join(outputs)
    figures = {}
    header = r"^training ViT .* batch (\d+), (\d+) images/epoch, (\w+) (\w+)(, compiled)?$"
    for batch, images, device, precision, compiled in numbers(header, text):
        figures["setup"] = {
            "device": device,
            "precision": precision,
            "batch": int(batch),
            "images": int(images),
            "compiled": bool(compiled),
        }
    for side, key in (("bare timm step", "bare"), ("synthvit engine", "engine"), ("plain DataLoader loop", "plain")):
        for aug, rate in numbers(rf"^{side}(?:, (light|full) augmentation)?[^:\n]*:\s+([\d.]+) img/s", text):
            figures[f"{key}_{aug}_img_per_s" if aug else f"{key}_img_per_s"] = float(rate)
    for ratio, aug, value in numbers(r"^ratio engine / (plain|bare), (light|full) augmentation:\s+([\d.]+)x", text):
        figures[f"engine_over_{ratio}_{aug}"] = float(value)
    for value in numbers(r"^training FLOPs per image .*: ([\d.eE+-]+) GFLOP", text):
        figures["train_gflop_per_image"] = float(value)
    for datasheet, measured in numbers(
        r"^bf16 peak of .*: datasheet ([\d.]+|not)[^;]*; measured .* ([\d.]+) TFLOP/s", text
    ):
        figures["datasheet_bf16_tflops"] = float(datasheet) if datasheet != "not" else None
        figures["measured_matmul_bf16_tflops"] = float(measured)
    if "bf16 peak: not measured" in text:
        figures["peak"] = "not measured: no CUDA device"
    gflop = figures.get("train_gflop_per_image")
    for side in ("bare", "engine_light", "engine_full"):
        rate = figures.get(f"{side}_img_per_s")
        if gflop and rate:
            achieved = rate * gflop / 1e3
            figures[f"{side}_tflops"] = round(achieved, 3)
            for peak in ("datasheet_bf16_tflops", "measured_matmul_bf16_tflops"):
                if figures.get(peak):
                    figures[f"{side}_fraction_of_{peak.removesuffix('_tflops')}"] = round(achieved / figures[peak], 4)
    return figures


def parse_pretrain(outputs: list[str]) -> dict:
    text = "".join(outputs)
    figures = {}
    for where, rate in numbers(r"^rendered on the fly \((.+?)\):\s+([\d.]+) img/s", text):
        figures.update(rendered_img_per_s=float(rate), rendered_where=where)
    for rate in numbers(r"^preloaded uint8 tensor:\s+([\d.]+) img/s", text):
        figures["preloaded_img_per_s"] = float(rate)
    for cost in numbers(r"^cost of rendering on the fly: ([+-][\d.]+)%", text):
        figures["rendering_cost_percent"] = float(cost)
    return figures


def stage_figures(repo: Path) -> dict:
    """What the stages wrote: their metrics, wall seconds and img/s, and the MLflow runs in the SQLite store."""
    figures = {}
    for stage in ("pretrain", "finetune", "evaluate"):
        path = repo / "metrics" / f"{stage}.json"
        if path.is_file():
            values = json.loads(path.read_text())
            figures[stage] = {k: v for k, v in values.items() if isinstance(v, (int, float))}
    for path in sorted((repo / "metrics" / "timing").glob("*.json")):
        timing = json.loads(path.read_text())
        figures.setdefault("wall_s", {})[path.stem] = timing.get("wall_seconds")
        if timing.get("train_images_per_s"):
            figures.setdefault("train_img_per_s", {})[path.stem] = timing["train_images_per_s"]
    if (repo / "mlflow.db").is_file():
        with sqlite3.connect(repo / "mlflow.db") as db:
            figures["mlflow_runs"] = dict(db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
    return figures


def targets(report: dict) -> dict:
    """Each target against its figure; on a CPU they are not measured (they are CUDA figures)."""
    steps = report["steps"]
    if "environment" in steps and steps["environment"]["status"] != "ok":
        return {"status": "not measured: the environment step failed"}
    if "environment" in steps and not steps["environment"]["figures"].get("device_count"):
        return {"status": "not measured: no CUDA device"}
    found = {}
    synthetic = steps.get("synthetic", {}).get("figures", {})
    verdicts = [p.get("same_bytes") for p in synthetic.values() if isinstance(p, dict)]
    if verdicts:
        found["renderer_bytes_equal_numpy"] = {"value": all(verdicts), "met": all(v is True for v in verdicts)}
    train = steps.get("train", {}).get("figures", {})
    for key, bound in TARGETS.items():
        if key in train:
            found[key] = {"value": train[key], "target": f">= {bound}", "met": train[key] >= bound}
    return found


# ---- the steps -------------------------------------------------------------------------------


def child_env(site: Path | None, src: Path, shims: Path) -> dict:
    """The steps' environment: this interpreter as `python` (DVC's stage commands say python), the
    carried wheels and the code on the path, no DVC or MLflow settings from outside, no network."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (site, src) if p)
    env["PATH"] = f"{shims}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        PYTHONUNBUFFERED="1",
        DVC_NO_ANALYTICS="1",
        HF_HUB_OFFLINE="1",
        GIT_AUTHOR_NAME="gpu-check",
        GIT_AUTHOR_EMAIL="gpu-check@synthvit.invalid",
        GIT_COMMITTER_NAME="gpu-check",
        GIT_COMMITTER_EMAIL="gpu-check@synthvit.invalid",
    )
    return env


def missing_wheels(wheels: Path) -> list[Path]:
    """The wheels whose distribution this interpreter does not have (its own versions win)."""
    missing = []
    for wheel in sorted(wheels.glob("*.whl")):
        try:
            importlib.metadata.version(wheel.name.split("-")[0])
        except importlib.metadata.PackageNotFoundError:
            missing.append(wheel)
    return missing


def find_dataset(data: Path, work: Path) -> Path:
    """The ImageFolder root (the folder holding train/) in `data` or in what it unpacked to."""
    for folder in (data, *sorted(p for p in work.glob("**/") if p.is_dir())):
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            return folder
    raise FileNotFoundError(f"no train/ and test/ folders in {data}")


def copy_repo(dest: Path) -> None:
    """The repository's own files (tracked and new, as git lists them; without git, all but the usual
    ignored folders) into dest: the pipeline runs there and leaves this working tree as it was."""
    listed = None
    if shutil.which("git") and (REPO / ".git").exists():
        result = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        listed = [name for name in result.stdout.split("\0") if name] if result.returncode == 0 else None
    if listed is None:
        outputs = ("mlflow.db*", "mlartifacts", "mlruns", "models", "gpu-check")
        ignored = shutil.ignore_patterns(".git", ".gpu", ".venv", "__pycache__", *outputs)
        shutil.copytree(REPO, dest, ignore=ignored, symlinks=True)
    for name in listed or []:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    # numba's compiled renderer loops (kept beside their sources, valid while the sources' times and sizes
    # match): the copy's first stage would otherwise compile them again, ~7 s on a quiet CPU, more on a busy one.
    for cached in (REPO / "src").glob("**/__pycache__/*.nb[ic]"):
        target = dest / cached.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(cached, target)


def write_params(repo: Path, overrides: list[str]) -> None:
    """params.yaml with `key=value` overrides, each value read as YAML, as `dvc exp run -S` applies them."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for item in overrides:
        key, _, value = item.partition("=")
        *sections, leaf = key.split(".")
        node = params
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = yaml.safe_load(value)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclasses.dataclass
class Run:
    """What the steps share: the options, the report, and what earlier steps found."""

    args: argparse.Namespace
    check: Check
    work: Path  # scratch: the python shims, installed wheels, unpacked data, fractals, the pipeline's copy
    site: Path | None  # where --wheels install
    devices: int = 0  # CUDA devices the environment step saw
    sizes: dict = dataclasses.field(default_factory=lambda: SIZES["quick"])
    imports: dict = dataclasses.field(default_factory=dict)
    root: Path | None = None  # the CIFAR-10 ImageFolder
    pipeline_ok: bool = False

    @property
    def python(self) -> str:
        return sys.executable

    @property
    def cli(self) -> list:
        return [self.python, "-m", "synthvit.commands.cli"]

    @property
    def copy(self) -> Path:
        return self.work / "repo"

    def env(self, repo: Path = REPO) -> dict:
        return child_env(self.site, repo / "src", self.work / "bin")

    def imported(self, name: str) -> bool:
        return not str(self.imports.get(name, "missing")).startswith("missing")


def environment(run: Run) -> None:
    result = run.check.step(
        "environment", [[run.python, "-c", PROBE]], run.env(), parse=lambda o: parse_json_line("environment: ", o)
    )
    run.devices = result["figures"].get("device_count", 0) if result["status"] == "ok" else 0
    quick = run.args.quick or not run.devices
    run.sizes = SIZES["quick" if quick else "cuda"]
    run.check.report["sizes"] = "quick" if quick else "cuda"


def install(run: Run) -> None:
    commands = []
    if run.args.wheels:
        missing = missing_wheels(run.args.wheels)
        run.check.log(f"wheels this Python lacks: {len(missing)} of {len(list(run.args.wheels.glob('*.whl')))}\n")
        if missing:
            pip = [run.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", run.site]
            commands.append([*pip, *missing])
    commands.append([run.python, "-c", IMPORTS % (NEEDED, OPTIONAL_IMPORTS)])
    run.imports = run.check.step("install", commands, run.env(), parse=lambda o: parse_json_line("imports: ", o))[
        "figures"
    ]


def data(run: Run) -> str | None:
    source = run.args.data or next((p for p in DATA_DEFAULTS if p.exists()), None)
    if source is None:
        return "no dataset: pass --data (a CIFAR-10 ImageFolder or cifar10.tar.xz)"
    source, unpacked = source.resolve(), run.work / "data"
    commands = []
    if source.is_file():
        unpacked.mkdir(exist_ok=True)
        tar = ["tar", "-xJf", source, "-C", unpacked]
        commands.append(tar if shutil.which("tar") else [run.python, "-m", "tarfile", "-e", source, unpacked])
    found = {}
    commands.append(lambda: found.update(root=find_dataset(source, unpacked)))
    result = run.check.step(
        "data", commands, run.env(), parse=lambda o: {"source": str(source), "root": str(found.get("root", ""))}
    )
    run.root = found.get("root") if result["status"] == "ok" else None
    return None


def synthetic(run: Run) -> str | None:
    presets = run.sizes["synthetic"]
    commands = [[*run.cli, "bench", "synthetic", *preset] for preset in presets.values()]
    run.check.step("synthetic", commands, run.env(), parse=parse_synthetic(list(presets)))
    return None


def train(run: Run) -> str | None:
    if run.root is None:
        return "no dataset (see the data step)"
    extra = []
    if run.sizes is SIZES["cuda"]:
        extra = ["--batch-size", str(run.args.train_batch), "--workers", str(min(8, (os.cpu_count() or 2) // 2))]
        # torch.compile's GPU kernels (Triton) need a host C compiler; without one, the figures come eager.
        if any(shutil.which(cc) for cc in (os.environ.get("CC", "cc"), "gcc", "clang")):
            extra.append("--compile")
    bench = [*run.cli, "bench", "train", "--root", run.root, "--params", REPO / "params.yaml", *run.sizes["train"]]
    run.check.step("train", [[*bench, *extra]], run.env(), parse=parse_train)
    return None


def pretrain(run: Run) -> str | None:
    fractals = run.work / "fractals"
    shutil.rmtree(fractals, ignore_errors=True)
    generate = [run.python, "-c", GENERATE, fractals, *run.sizes["fractals"]]
    bench = [*run.cli, "bench", "pretrain", "--synthetic", fractals, "--params", REPO / "params.yaml"]
    run.check.step("pretrain", [generate, [*bench, *run.sizes["pretrain"]]], run.env(), parse=parse_pretrain)
    return None


def pipeline(run: Run) -> str | None:
    """Every stage in a copy of the repository: `dvc exp run` with the recipe, or without DVC the stages'
    commands from dvc.yaml, in its order, on params.yaml with the same overrides written in."""
    if run.root is None:
        return "no dataset (see the data step)"
    missing = [name for name in NEEDED if not run.imported(name)]
    if missing:
        return f"{', '.join(missing)} do(es) not import (see the install step)"
    git = bool(shutil.which("git"))
    use_dvc = run.args.pipeline == "dvc" or (run.args.pipeline == "auto" and run.imported("dvc") and git)
    mode = "dvc exp run" if use_dvc else "stage scripts in dvc.yaml's order"
    run.check.log(f"pipeline: {mode} (DVC imports: {run.imported('dvc')}, git: {git})\n")
    recipe = run.sizes["recipe"]
    overrides = []

    def read_recipe() -> None:
        printed = subprocess.run(
            [*run.cli, "recipe", recipe], cwd=REPO, env=run.env(), capture_output=True, text=True, timeout=120
        )
        if printed.returncode:
            raise RuntimeError(f"synthvit recipe {recipe}: {printed.stderr.strip()}")
        overrides.extend(shlex.split(printed.stdout)[1::2])  # -S key=value -S key=value ...
        overrides.extend(["data.name=imagefolder", f"data.root={run.root}"])

    shutil.rmtree(run.copy, ignore_errors=True)
    commands = [lambda: copy_repo(run.copy), read_recipe]
    if use_dvc:
        name = f"gpu-check-{time.strftime('%Y%m%d-%H%M%S')}"
        commands += [["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", name]]
        commands.append(
            lambda: [run.python, "-m", "dvc", "exp", "run", "-n", name, *sum((["-S", o] for o in overrides), [])]
        )
    else:
        commands.append(lambda: write_params(run.copy, overrides))
        stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
        commands += [shlex.split(stage["cmd"]) for stage in stages.values()]
    parse = lambda outputs: {"mode": mode, "recipe": recipe, **stage_figures(run.copy)}
    result = run.check.step("pipeline", commands, run.env(run.copy), cwd=run.copy, parse=parse)
    run.pipeline_ok = result["status"] == "ok"
    return None


def ddp(run: Run) -> str | None:
    """The finetune stage again, in the pipeline's copy, under torchrun with 2 processes (NCCL; gloo on a CPU)."""
    if run.args.ddp == "off":
        return "--ddp off"
    if run.args.ddp == "auto" and run.devices < 2:
        return "no CUDA device" if not run.devices else f"{run.devices} GPU"
    if not run.pipeline_ok:
        return "the pipeline step did not finish: the finetune stage needs its copy and pre-trained model"
    torchrun = [run.python, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1"]
    finetune = [*torchrun, "--master-port", free_port(), "stages/finetune.py"]

    def parse(outputs: list[str]) -> dict:
        figures = stage_figures(run.copy)
        return {
            "processes": 2,
            **figures.get("finetune", {}),
            "wall_s": figures.get("wall_s", {}).get("finetune"),
            "train_img_per_s": figures.get("train_img_per_s", {}).get("finetune"),
        }

    run.check.step("ddp", [finetune], run.env(run.copy), cwd=run.copy, parse=parse)
    return None


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out", type=Path, help="for gpu-check.json and gpu-check.log (default: $OUT, else gpu-check/)"
    )
    parser.add_argument(
        "--wheels",
        type=Path,
        default=WHEELS_DEFAULT if WHEELS_DEFAULT.is_dir() else None,
        help="install the wheels here that this Python lacks, without network (default: .gpu/wheels if there)",
    )
    parser.add_argument("--site", type=Path, help="where --wheels installs (default: site/ under --work)")
    parser.add_argument(
        "--data",
        type=Path,
        help="CIFAR-10 ImageFolder or its .tar.xz (default: .gpu/cifar10.tar.xz, else ../shared/datasets/cifar10)",
    )
    parser.add_argument("--work", type=Path, help="scratch folder, kept afterwards (default: a temporary one)")
    parser.add_argument("--budget", type=float, default=510, help="seconds for the whole run (default: %(default)s)")
    parser.add_argument(
        "--steps", default=",".join(OPTIONAL), help=f"comma-separated, of {','.join(OPTIONAL)} (default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="test sizes even on CUDA (always without CUDA)")
    parser.add_argument(
        "--train-batch", type=int, default=256, help="bench train's batch on CUDA (default: %(default)s)"
    )
    parser.add_argument(
        "--pipeline",
        choices=["auto", "dvc", "stages"],
        default="auto",
        help="auto: dvc exp run when DVC imports and git is there, else the stage scripts in order",
    )
    parser.add_argument(
        "--ddp", choices=["auto", "on", "off"], default="auto", help="auto: with 2 CUDA devices; on: also on a CPU"
    )
    args = parser.parse_args(argv)
    unknown = set(args.steps.split(",")) - set(OPTIONAL)
    if unknown:
        parser.error(f"--steps: unknown {sorted(unknown)}; steps: {', '.join(OPTIONAL)}")
    return args


OPTIONAL = {"synthetic": synthetic, "train": train, "pretrain": pretrain, "pipeline": pipeline, "ddp": ddp}


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    out = (args.out or Path(os.environ.get("OUT") or "gpu-check")).resolve()
    check = Check(out, args.budget, [sys.argv[0], *argv])
    work = Path(args.work or tempfile.mkdtemp(prefix="synthvit-gpu-check-")).resolve()
    (work / "bin").mkdir(parents=True, exist_ok=True)
    for name in ("python", "python3"):  # a script, not a link: a link to a venv's python loses the venv
        (work / "bin" / name).write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
        (work / "bin" / name).chmod(0o755)
    run = Run(args, check, work, (args.site or work / "site").resolve() if args.wheels else None)
    wanted = args.steps.split(",")

    environment(run)  # the machine, and so the sizes, first: every step depends on them
    install(run)
    if {"train", "pipeline"} & set(wanted):
        reason = data(run)
        if reason:
            check.skip("data", reason)
    else:
        check.skip("data", "no step in --steps reads it")
    for name, step in OPTIONAL.items():
        reason = step(run) if name in wanted else "not in --steps"
        if reason:
            check.skip(name, reason)

    check.report["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    check.write()
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    bad = [name for name, step in check.report["steps"].items() if step["status"] in ("failed", "timeout")]
    summary = f"not ok: {', '.join(bad)}" if bad else "every step ok or skipped"
    print(f"[gpu-check] report: {check.json_path}; log: {check.log_path}; {summary}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
