"""Commands users run that need no pipeline: check, tracking check, the compare figures, compile."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from helpers.repo import REPO
from helpers.training import bright_vs_dark, plain_recipe
from synthvit.commands import cli
from synthvit.commands.reporting.figures import accuracy_plot
from synthvit.config import ModelConfig, RuntimeConfig
from synthvit.models import create_model
from synthvit.runtime import seed_everything
from synthvit.training.engine import train


def synthvit(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as code:
        cli.main(list(args))
    out, err = capsys.readouterr()
    return code.value.code, out, err


def test_check_says_what_a_params_file_describes(tmp_path, capsys):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["model"].update(depth=6, embed_dim=128, num_heads=4, patch_embed="conv")
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(params))
    code, out, _ = synthvit(capsys, "check", str(tmp_path / "other.yaml"))
    assert code == 0 and out.splitlines()[0] == f"{tmp_path / 'other.yaml'}: valid"
    assert (
        "model:     ViT of 6 blocks, width 128, 4 heads, convolutional stem to 4-px patches, learned positions, "
        "at 32 px (timm vit_tiny_patch16_224)"
    ) in out
    assert "pretrain:  fractaldb, 1000 categories x 100 images, 100 epochs" in out


def test_check_names_the_file_it_read(tmp_path, capsys):
    (tmp_path / "other.yaml").write_text("finetune:\n  epochs: 0\n")
    code, _, err = synthvit(capsys, "check", str(tmp_path / "other.yaml"))
    assert code == 2 and err == f"error: {tmp_path / 'other.yaml'}: finetune.epochs=0 is invalid: an integer >= 1\n"
    (tmp_path / "twice.yaml").write_text("seed: 1\nseed: 2\n")
    code, _, err = synthvit(capsys, "check", str(tmp_path / "twice.yaml"))
    assert code == 2 and "key 'seed' is written twice (lines 1 and 2); DVC refuses such a file: keep one" in err


def test_help_and_check_answer_fast():
    """`synthvit --help` and `synthvit check` import neither torch, timm nor MLflow."""
    for args in (["--help"], ["check", str(REPO / "params.yaml")]):
        started = time.monotonic()
        code = (
            "import sys; from synthvit.commands import cli\n"
            "try:\n    cli.main(sys.argv[1:])\nexcept SystemExit: pass\n"
            "assert not {'torch', 'timm', 'mlflow'} & set(sys.modules), sorted(sys.modules)"
        )
        result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - started < 5  # measured ~0.1-0.4 s; generous for a busy CI machine


def test_tracking_check_of_the_local_store(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    code, out, _ = synthvit(capsys, "tracking", "check")
    assert (
        code == 0
        and out == f"MLflow tracking store sqlite:///{tmp_path}/mlflow.db is a local SQLite file: nothing to check\n"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    code, _, err = synthvit(capsys, "tracking", "check")
    assert code == 2 and err.startswith(
        "error: MLflow tracking server http://127.0.0.1:9 does not answer (connection refused)"
    )


def test_compare_plots_accuracy_against_wall_time():
    table = pd.DataFrame({"name": ["a", "b", "c"], "test_top1": [0.4, 0.5, 0.45], "wall_total_s": [100.0, 300.0, None]})
    ax = accuracy_plot(table, "wall", "t").axes[0]
    (points,) = ax.collections
    assert points.get_offsets().tolist() == [[100.0, 0.4], [300.0, 0.5]]  # c has no wall time: not drawn
    assert [t.get_text() for t in ax.texts] == ["a", "b"] and ax.get_xlabel() == "total wall time (s)"


@pytest.mark.e2e  # torch.compile's first build takes ~40 s on 2 cores: `make test` runs it, `make test-fast` not
def test_compiled_training_learns_like_eager():
    """runtime.compile=true: torch.compile the model; the same recipe learns the same task."""
    model_cfg = ModelConfig(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.0)
    cfg = plain_recipe(epochs=2, batch_size=16, lr=2e-3, checkpoint_every=0)
    histories = {}
    for compiled in (False, True):
        seed_everything(0)
        histories[compiled] = train(
            create_model(model_cfg, 2), bright_vs_dark(64), cfg, RuntimeConfig(device="cpu", compile=compiled), seed=0
        )
    eager, compiled = histories[False], histories[True]
    assert all(math.isfinite(h["train_loss"]) for h in compiled)
    # Fused kernels round differently in the last bits; the trajectory is the same.
    assert [h["train_loss"] for h in compiled] == pytest.approx([h["train_loss"] for h in eager], rel=1e-3)


def test_bench_record_keeps_the_command_the_machine_and_the_output(tmp_path):
    """`synthvit bench ... --record NAME`: results/benchmarks/NAME.txt, which the documents quote."""
    import torch

    from synthvit.commands import benchmarks

    command = ["bench", "synthetic", "--image-size", "32", "--points", "2000", "--fast-images", "4"]
    command += ["--reference-images", "1", "--repeats", "1", "--workers", "1", "--record", "tiny"]
    result = subprocess.run(
        [str(Path(sys.executable).parent / "synthvit"), *command],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    header, output = (tmp_path / "results/benchmarks/tiny.txt").read_text().split("---\n", 1)
    meta = yaml.safe_load(header)
    assert meta["command"] == "synthvit " + " ".join(command)
    assert meta["machine"]["torch"] == torch.__version__ and meta["machine"]["cpu_cores"] >= 1
    assert output == result.stdout and "img/s" in output
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        quoted = benchmarks.quoted("tiny")
    assert quoted.startswith("```\n$ synthvit bench synthetic --image-size 32") and "Measured " in quoted
