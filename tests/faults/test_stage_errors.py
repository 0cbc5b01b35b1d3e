"""Bad input stops a stage with one clear line (exit 2), no traceback and no outputs."""

import subprocess
import sys

import pytest
import yaml

from helpers.repo import pipeline_env


def run_stage(repo, stage, **overrides):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return subprocess.run(
        [sys.executable, f"stages/{stage}.py"],
        cwd=repo,
        env=pipeline_env(repo),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "stage, overrides, message",
    [
        ("finetune", {"finetune.lr": -1.0}, "params.yaml: finetune.lr=-1.0 is invalid: a number > 0"),
        (
            "pretrain",
            {"model.patch_size": 5},
            "params.yaml: model.patch_size=5 is invalid: must divide model.img_size=32",
        ),
        (
            "finetune",
            {"data.name": "imagenet"},
            "params.yaml: data.name='imagenet' is invalid: one of cifar10, cifar100, mnist, imagefolder",
        ),
        (
            "finetune",
            {"data.name": "imagefolder", "data.root": "no/such/folder"},
            "data.root='no/such/folder' is invalid: no such folder",
        ),
        ("finetune", {"data.root": "data/nothing_here", "data.download": False}, "holds no cifar-10-batches-py"),
        # The data is there (a stage checks the whole pipeline's inputs first); the model is not.
        ("evaluate", {"data.name": "imagefolder", "data.root": "SMALL"}, "models/finetune.pt not found: run the stage"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_outputs(repo_copy, small_imagefolder, stage, overrides, message):
    overrides = {k: str(small_imagefolder) if v == "SMALL" else v for k, v in overrides.items()}
    result = run_stage(repo_copy, stage, **overrides)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
    for output in ("models", "metrics/finetune.json", "metrics/evaluate.json", "plots/finetune", "mlflow.db"):
        assert not (repo_copy / output).exists(), output
