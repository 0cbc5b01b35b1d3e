"""`make gpu-check` on a CPU: scripts/gpu_check.py runs every step a CPU can at test size, records each in
gpu-check.json with its figures, and skips the CUDA-only ones with the reason (docs/gpu-check.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from helpers.repo import REPO, STAGES, pipeline_env

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA the check runs at full size")


def gpu_check(tmp_path, cifar10_root, *args: str) -> tuple[dict, str]:
    out = tmp_path / "out"
    command = [sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--out", str(out), "--data", str(cifar10_root)]
    result = subprocess.run(
        [*command, "--work", str(tmp_path / "work"), *args],
        cwd=REPO,
        env=pipeline_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=900,
    )
    report = json.loads((out / "gpu-check.json").read_text())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return report, (out / "gpu-check.log").read_text()


def positive(figures: dict, *keys: str) -> bool:
    return all(isinstance(figures.get(key), (int, float)) and figures[key] > 0 for key in keys)


def test_cpu_run_records_every_step(tmp_path, cifar10_root):
    params = (REPO / "params.yaml").read_text()
    # The stage scripts in dvc.yaml's order, as on the GPU machine, whose carried wheels leave DVC out.
    report, log = gpu_check(tmp_path, cifar10_root, "--pipeline", "stages")
    steps = report["steps"]
    assert list(steps) == ["environment", "install", "data", "synthetic", "train", "pretrain", "pipeline", "ddp"]
    assert report["sizes"] == "quick" and report["machine"]["cpu_cores"] > 0 and report["wall_s"] > 0

    # CUDA-only: skipped, saying why
    assert steps["ddp"]["status"] == "skipped" and steps["ddp"]["reason"] == "no CUDA device"
    assert report["targets"] == {"status": "not measured: no CUDA device"}
    assert steps["train"]["figures"]["peak"] == "not measured: no CUDA device"

    assert all(steps[name]["status"] == "ok" for name in list(steps)[:-1]), {n: s["reason"] for n, s in steps.items()}
    assert steps["environment"]["figures"]["device_count"] == 0
    assert steps["install"]["figures"]["mlflow"][0].isdigit()
    synthetic = steps["synthetic"]["figures"]["training"]
    assert synthetic["same_bytes"] is True and synthetic["device"] == "cpu" and synthetic["images_compared"] == 8
    assert synthetic["img_per_s"] and all(rate > 0 for rate in synthetic["img_per_s"].values())
    train = steps["train"]["figures"]
    sides = ("bare", "engine_light", "plain_light", "engine_full", "plain_full")
    assert positive(train, "train_gflop_per_image", *(f"{side}_img_per_s" for side in sides))
    assert positive(train, "engine_over_plain_light", "engine_over_bare_light", "engine_over_plain_full")
    assert positive(steps["pretrain"]["figures"], "rendered_img_per_s", "preloaded_img_per_s")

    pipeline = steps["pipeline"]["figures"]
    assert pipeline["mode"] == "stage scripts in dvc.yaml's order" and pipeline["recipe"] == "gpu-check-quick"
    assert 0 <= pipeline["evaluate"]["top1"] <= 1 and pipeline["finetune"]["epochs"] == 2
    assert sorted(pipeline["wall_s"]) == sorted(STAGES) and positive(pipeline["wall_s"], *STAGES)
    assert pipeline["mlflow_runs"].get("FINISHED", 0) >= len(STAGES) and set(pipeline["mlflow_runs"]) == {"FINISHED"}

    assert "===== pipeline =====" in log and "test top-1" in log and "[gpu-check] ddp: skipped" in log
    assert (REPO / "params.yaml").read_text() == params  # the pipeline ran in a copy


@pytest.mark.e2e
def test_dvc_exp_run_when_dvc_is_there(tmp_path, cifar10_root):
    report, log = gpu_check(tmp_path, cifar10_root, "--steps", "pipeline", "--pipeline", "dvc")
    pipeline = report["steps"]["pipeline"]
    assert pipeline["status"] == "ok", pipeline["reason"]
    assert pipeline["figures"]["mode"] == "dvc exp run"
    assert pipeline["figures"]["mlflow_runs"] == {"FINISHED": len(STAGES) + 1}  # one parent run over the stages
    assert all(f"Running stage '{stage}'" in log for stage in STAGES)
    assert report["steps"]["train"] == {"status": "skipped", "seconds": 0.0, "reason": "not in --steps", "figures": {}}
