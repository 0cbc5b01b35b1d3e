"""scripts/gpu_check.py's parts that a CPU cannot run for real: reading CUDA figures, the time limits, and
what scripts/gpu_pack.py puts in the 64 MiB. The CPU run itself: tests/pipeline/test_gpu_check.py."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import yaml

from helpers.repo import REPO, unavailable
from synthvit.commands.bench import train as bench_train
from synthvit.commands.cli import build_parser


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    return module


gpu_check = load_script("gpu_check")


def test_cuda_figures_are_read_from_what_bench_train_prints():
    """The lines bench train prints on CUDA, made by its own functions with made-up figures."""
    flops, peaks = 2e9, {"datasheet": 1000e12, "measured": 800e12}
    lines = [
        "training ViT (depth 12, dim 192, patch 4) at 32px, batch 256, 50000 images/epoch, cuda bf16, compiled",
        "training FLOPs per image (forward + backward, FlopCounterMode): 2 GFLOP",
        bench_train.peak_line("NVIDIA H200", peaks["datasheet"], peaks["measured"]),
        bench_train.rate_line("bare timm step (one batch on the device)", 100_000, flops, peaks),
        bench_train.rate_line("synthvit engine, light augmentation", 90_000, flops, peaks),
        bench_train.rate_line("plain DataLoader loop, light augmentation (8 workers)", 20_000, flops, peaks),
        "ratio engine / plain, light augmentation:       4.50x",
        "ratio engine / bare, light augmentation:        0.90x",
    ]
    figures = gpu_check.parse_train(["\n".join(lines) + "\n"])
    assert figures["setup"] == {"device": "cuda", "precision": "bf16", "batch": 256, "images": 50000, "compiled": True}
    assert figures["bare_img_per_s"] == 100_000 and figures["engine_light_img_per_s"] == 90_000
    assert figures["plain_light_img_per_s"] == 20_000
    assert figures["engine_over_plain_light"] == 4.5 and figures["engine_over_bare_light"] == 0.9
    assert figures["datasheet_bf16_tflops"] == 1000 and figures["measured_matmul_bf16_tflops"] == 800
    assert figures["engine_light_tflops"] == 180  # 90,000 img/s x 2 GFLOP
    assert figures["engine_light_fraction_of_datasheet_bf16"] == 0.18
    assert figures["engine_light_fraction_of_measured_matmul_bf16"] == 0.225

    report = {
        "steps": {
            "environment": {"status": "ok", "figures": {"device_count": 1}},
            "synthetic": {"figures": {"faithful": {"same_bytes": True}, "training": {"same_bytes": False}}},
            "train": {"figures": figures},
        }
    }
    targets = gpu_check.targets(report)
    assert targets["renderer_bytes_equal_numpy"] == {"value": False, "met": False}
    assert targets["engine_over_bare_light"] == {"value": 0.9, "target": ">= 0.85", "met": True}
    assert targets["engine_light_img_per_s"]["met"] is True and targets["engine_over_plain_light"]["met"] is True
    assert "engine_over_plain_full" not in targets  # not measured: no figure, no verdict


def test_a_step_past_its_limit_is_stopped_and_keeps_its_output(tmp_path, monkeypatch):
    monkeypatch.setitem(gpu_check.LIMITS, "synthetic", 6)
    check = gpu_check.Check(tmp_path / "out", budget=60, argv=["gpu_check.py"])
    slow = [sys.executable, "-c", "import time; print('partial figure', flush=True); time.sleep(120)"]
    result = check.step("synthetic", [slow], env=None, parse=lambda outputs: {"seen": "partial figure" in outputs[0]})
    assert result["status"] == "timeout" and result["seconds"] < 30
    assert result["reason"].startswith("stopped after 6 s") and result["figures"] == {"seen": True}
    after = check.step("train", [[sys.executable, "-c", "print('next')"]], env=None)
    assert after["status"] == "ok"
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert [report["steps"][s]["status"] for s in ("synthetic", "train")] == ["timeout", "ok"]
    log = (tmp_path / "out" / "gpu-check.log").read_text()
    assert "partial figure" in log and "next" in log and "[gpu-check] synthetic: timeout" in log


def test_a_spent_budget_skips_the_steps_left(tmp_path):
    check = gpu_check.Check(tmp_path / "out", budget=1, argv=["gpu_check.py"])
    result = check.step("train", [[sys.executable, "-c", "print('never')"]], env=None)
    assert result["status"] == "skipped" and result["reason"].startswith("out of time")


def test_params_get_the_overrides_as_dvc_exp_run_applies_them(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    gpu_check.write_params(tmp_path, ["finetune.epochs=2", "finetune.crop_scale=[0.5,1.0]", "data.root=/x y"])
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert params["finetune"]["epochs"] == 2 and params["finetune"]["crop_scale"] == [0.5, 1.0]
    assert params["data"]["root"] == "/x y" and params["model"]["depth"] == 12


def test_the_pack_holds_mlflow_without_dvc_and_fits_64_mib():
    wheels = REPO.parent / "shared" / "wheels-cp312"
    if not wheels.is_dir():
        unavailable(f"no shared wheels at {wheels}")
    gpu_pack = load_script("gpu_pack")
    packed, absent = gpu_pack.needed_wheels(wheels)
    names = {path.name.split("-")[0].lower() for path in packed}
    assert {"mlflow", "mlflow_skinny", "pydantic", "pydantic_core", "sqlalchemy", "alembic"} <= names
    assert not names & {"dvc", "dvc_data", "scmrepo", "pygit2", "dulwich", "celery"}
    assert "numpy" in absent and "torch" not in absent  # the machine's own; nothing here asks for torch
    data = REPO.parent / "shared" / "datasets" / "cifar10.tar.xz"
    total = sum(p.stat().st_size for p in packed) + data.stat().st_size + gpu_pack.repository_bytes()
    # Room for the repository to grow: 3 MiB since the study's released backbone (4.8 MB) travels in git; the
    # study's remaining locked runs take about 1.5 MB of it.
    assert total < gpu_pack.LIMIT - 3 * 2**20


def test_bench_train_prints_every_side_on_a_cpu(small_imagefolder, capsys):
    arguments = ["bench", "train", "--root", str(small_imagefolder), "--params", str(REPO / "params.yaml")]
    tiny = ["--images", "40", "--batch-size", "8", "--depth", "1", "--embed-dim", "16", "--heads", "2"]
    args = build_parser().parse_args([*arguments, *tiny, "--workers", "0", "--augment", "both", "--device", "cpu"])
    assert bench_train.run(args) == 0
    figures = gpu_check.parse_train([capsys.readouterr().out])
    sides = ("bare", "engine_light", "plain_light", "engine_full", "plain_full")
    assert all(figures[f"{side}_img_per_s"] > 0 for side in sides), figures
    assert figures["train_gflop_per_image"] > 0 and figures["peak"] == "not measured: no CUDA device"
    assert figures["setup"] == {"device": "cpu", "precision": "fp32", "batch": 8, "images": 40, "compiled": False}


@pytest.mark.parametrize("git", [True, False])
def test_the_pipeline_copy_holds_the_repository_with_or_without_git(tmp_path, monkeypatch, git):
    if not git:  # a machine without git, or a working tree copied without .git
        monkeypatch.setattr(gpu_check.shutil, "which", lambda name: None)
    gpu_check.copy_repo(tmp_path / "copy")
    for name in ("dvc.yaml", "params.yaml", "stages/finetune.py", "src/synthvit/training/engine.py", ".dvc/config"):
        assert (tmp_path / "copy" / name).is_file(), name
    assert not (tmp_path / "copy" / ".git").exists() and not (tmp_path / "copy" / ".gpu").exists()
