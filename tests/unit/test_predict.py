"""`synthvit predict`: same answers as the evaluate stage, per-file errors, tables, and models from the
MLflow registry."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from helpers.commands import run_synthvit
from helpers.repo import REPO, copy_subset, pipeline_env
from helpers.training import tiny_finetuned_checkpoint
from synthvit.commands.cli import main as cli_main
from synthvit.config import ModelConfig, parse_params
from synthvit.errors import ConfigError
from synthvit.models import create_model, save_checkpoint
from synthvit.tracking import registry, runs

TINY = ModelConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.0)
SYNTHVIT = str(Path(sys.executable).parent / "synthvit")


@pytest.fixture(scope="module")
def cifar_small(tmp_path_factory, request) -> Path:
    cifar10_root = request.getfixturevalue("cifar10_root")
    return copy_subset(
        cifar10_root, tmp_path_factory.mktemp("cifar") / "cifar_small", train_per_class=8, test_per_class=3
    )


@pytest.fixture(scope="module")
def checkpoint(cifar_small, tmp_path_factory) -> Path:
    """A tiny ViT fine-tuned for a few epochs on 80 real CIFAR-10 images."""
    return tiny_finetuned_checkpoint(cifar_small / "train", tmp_path_factory.mktemp("model") / "finetune.pt", TINY)


def run_cli(*args, env=None, cwd=None):
    """The installed `synthvit` command in its own process."""
    return subprocess.run([SYNTHVIT, *map(str, args)], capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


cli = run_synthvit


def run_evaluate_stage(workdir: Path, data_root: Path, checkpoint: Path, tta_flip: bool, monkeypatch) -> pd.DataFrame:
    """The evaluate stage (params.yaml, models/finetune.pt) in `workdir`: as DVC runs it, in its own process,
    or (with TTA, to save the imports) by calling its main() here."""
    (workdir / "models").mkdir(parents=True)
    shutil.copy(checkpoint, workdir / "models/finetune.pt")
    shutil.copy(REPO / "dvc.yaml", workdir)  # the params evaluate must find unchanged before it writes
    params = {
        "data": {"name": "imagefolder", "root": str(data_root)},
        "evaluate": {"batch_size": 7, "tta_flip": tta_flip},
    }
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    if not tta_flip:
        env = {**pipeline_env(workdir), "DVC_ROOT": str(workdir)}
        result = subprocess.run(
            [sys.executable, str(REPO / "stages/evaluate.py")],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    else:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        monkeypatch.setenv("DVC_ROOT", str(workdir))
        monkeypatch.chdir(workdir)
        spec = importlib.util.spec_from_file_location("evaluate_stage", REPO / "stages/evaluate.py")
        stage = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(stage)
        try:
            stage.main()
        finally:  # the stage sets both process-wide; leave neither to later tests
            mlflow.set_tracking_uri(None)
            mlflow.set_registry_uri(None)
    return pd.read_csv(workdir / "plots/evaluate/predictions.csv")


@pytest.mark.parametrize("tta_flip", [False, True])
def test_predict_equals_the_evaluate_stage(cifar_small, checkpoint, tmp_path, tta_flip, monkeypatch, capsys):
    evaluated = run_evaluate_stage(tmp_path / "work", cifar_small, checkpoint, tta_flip, monkeypatch)
    assert len(evaluated) == 30
    table = tmp_path / "predict.csv"
    args = [
        "predict",
        cifar_small / "test",
        "--model",
        checkpoint,
        "--output",
        table,
        *(["--tta-flip"] if tta_flip else []),
    ]
    if tta_flip:
        code, stdout, stderr = cli(capsys, *args)
    else:  # the real installed command
        result = run_cli(*args)
        code, stdout, stderr = result.returncode, result.stdout, result.stderr
    assert code == 0, stderr
    predicted = pd.read_csv(table)
    assert len(predicted) == 30 and predicted["error"].isna().all()
    merged = evaluated.assign(path=evaluated["path"].map(lambda p: str(Path(p).resolve()))).merge(
        predicted.assign(path=predicted["path"].map(lambda p: str(Path(p).resolve()))), on="path"
    )
    assert len(merged) == 30
    assert (merged["predicted"] == merged["class"]).all(), merged[merged["predicted"] != merged["class"]]
    # evaluate writes confidences rounded to 5 decimals
    assert (merged["confidence_x"] - merged["confidence_y"]).abs().max() <= 6e-6
    assert merged["predicted"].nunique() >= 2, "a model that answers one class for everything proves little"
    # The stdout lines say the same.
    lines = stdout.strip().splitlines()
    assert len(lines) == 30
    path, rest = lines[0].rsplit(": ", 1)
    first = predicted.set_index("path").loc[path]
    assert rest == f"{first['class']} {first['confidence']:.4f}"
    # ECE is in the metrics and the reliability diagram was drawn.
    metrics = json.loads((tmp_path / "work/metrics/evaluate.json").read_text())
    assert 0 <= metrics["ece"] <= 1 and metrics["ece_bins"] == 15 and metrics["tta_flip"] == int(tta_flip)
    bins = pd.read_csv(tmp_path / "work/plots/evaluate/calibration.csv")
    assert bins["count"].sum() == 30 and bins["perfectly_calibrated"].tolist() == bins["confidence"].tolist()
    with Image.open(tmp_path / "work/plots/evaluate/reliability.png") as image:  # its drawing: test_calibration.py
        assert image.format == "PNG"
    per_class = pd.read_csv(tmp_path / "work/plots/evaluate/per_class.csv")
    assert {"class", "precision", "recall", "f1", "support", "accuracy", "mean_confidence"} <= set(per_class.columns)


@pytest.fixture
def mixed_folder(cifar10_root, tmp_path) -> Path:
    """Two real images, a text file, a truncated JPEG, an empty PNG and a nested real image."""
    folder = tmp_path / "mixed"
    (folder / "nested").mkdir(parents=True)
    cats = sorted((cifar10_root / "test/cat").iterdir())
    shutil.copy(cats[0], folder / "a_cat.jpg")
    shutil.copy(cats[1], folder / "b_cat.jpg")
    shutil.copy(sorted((cifar10_root / "test/ship").iterdir())[0], folder / "nested/ship.jpg")
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "truncated.jpg").write_bytes(cats[2].read_bytes()[:300])
    (folder / "empty.png").write_bytes(b"")
    return folder


def test_corrupt_and_non_image_files_do_not_stop_the_batch(checkpoint, mixed_folder, tmp_path, capsys):
    table = tmp_path / "out.json"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(
            ["predict", str(mixed_folder), "--model", str(checkpoint), "--top-k", "3", "--json", "--output", str(table)]
        )
    assert exit_info.value.code == 1  # some failed
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.strip().splitlines()]
    by_name = {Path(r["path"]).name: r for r in records}
    assert sorted(by_name) == ["a_cat.jpg", "b_cat.jpg", "empty.png", "notes.txt", "ship.jpg", "truncated.jpg"]
    for name in ("a_cat.jpg", "b_cat.jpg", "ship.jpg"):
        record = by_name[name]
        assert "error" not in record
        confidences = [t["confidence"] for t in record["top_k"]]
        assert (
            len(confidences) == 3 and confidences == sorted(confidences, reverse=True) and sum(confidences) <= 1 + 1e-6
        )
        assert record["class"] == record["top_k"][0]["class"] and record["confidence"] == confidences[0]
    for name in ("notes.txt", "truncated.jpg", "empty.png"):
        assert "cannot read image" in by_name[name]["error"], by_name[name]
        assert any(line.startswith("error: ") and name in line for line in err.splitlines()), err
    assert "3 of 6 input(s) could not be classified" in err
    assert json.loads(table.read_text()) == records


def test_globs_files_and_exit_codes(checkpoint, mixed_folder, tmp_path, capsys):
    # Only good images: exit 0, one text line each. A pattern and a file; the file is matched twice but listed once.
    code, out, err = cli(
        capsys,
        "predict",
        f"{mixed_folder}/*_cat.jpg",
        mixed_folder / "a_cat.jpg",
        "--model",
        checkpoint,
        "--output",
        tmp_path / "t.csv",
    )
    assert code == 0, err
    assert [line.split(": ")[0] for line in out.splitlines()] == [
        str(mixed_folder / "a_cat.jpg"),
        str(mixed_folder / "b_cat.jpg"),
    ]
    table = pd.read_csv(tmp_path / "t.csv")
    assert table.columns.tolist() == ["path", "class", "confidence", "error", "top1_class", "top1_confidence"]
    assert table["class"].tolist() == [line.split(": ")[1].split()[0] for line in out.splitlines()]
    # A missing file is a per-input failure; the good one is still classified.
    code, out, err = cli(capsys, "predict", mixed_folder / "a_cat.jpg", tmp_path / "missing.jpg", "--model", checkpoint)
    assert code == 1
    assert len(out.splitlines()) == 1 and "missing.jpg: no such file or folder" in err
    # Usage errors: one line, exit 2, no traceback.
    for args, message in [
        (["--model", tmp_path / "nope.pt"], "nope.pt not found"),
        (["--model", checkpoint, "--top-k", "0"], "--top-k=0 is invalid"),
        (["--model", checkpoint, "--output", tmp_path / "t.txt"], "name a .csv or .json file"),
    ]:
        code, out, err = cli(capsys, "predict", mixed_folder / "a_cat.jpg", *args)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
        assert err.startswith("error: ") and message in err


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A real SQLite MLflow store under a fake repo root, for this process and the commands it starts."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runs, "pipeline_key", lambda: "dvc-1-1")
    yield tmp_path
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def log_and_register(checkpoint: Path, model, alias: str = "current", score=None, heldout: str = "") -> str:
    with runs.stage_run("finetune", {}, "unit"):
        return registry.log_model(model, checkpoint, "synthvit-vit", alias, score, heldout)


def test_the_serving_alias_never_moves_to_a_worse_model(checkpoint, store, capsys):
    from synthvit.models import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(checkpoint))

    def served() -> str:
        # A client made now: the stage run is what points MLflow at this test's store.
        return str(mlflow.MlflowClient().get_model_version_by_alias("synthvit-vit", "current").version)

    assert log_and_register(checkpoint, model, score=0.40, heldout="val-a") == "1" and served() == "1"
    assert log_and_register(checkpoint, model, score=0.35, heldout="val-a") == "2" and served() == "1"  # worse
    assert (
        "stays on version 1, which scored 0.4000 on the same held-out images (this one 0.3500)"
        in capsys.readouterr().out
    )
    assert log_and_register(checkpoint, model, score=0.40, heldout="val-a") == "3" and served() == "3"  # as good
    assert log_and_register(checkpoint, model, score=0.10, heldout="val-b") == "4" and served() == "4"  # not comparable
    assert mlflow.MlflowClient().get_model_version("synthvit-vit", "2").tags[registry.SCORE_TAG] == "0.350000"


def test_a_registered_version_says_its_arm_its_model_and_its_scores(checkpoint, store):
    from synthvit.models import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(checkpoint))
    with runs.stage_run("finetune", {}, "unit"):
        registry.log_model(
            model,
            checkpoint,
            "synthvit-vit",
            "current",
            score=0.4,
            heldout="val-a",
            arm="scratch",
            model_summary=TINY.summary(),
            input_example=torch.zeros(1, 3, 32, 32).numpy(),
        )
    client = mlflow.MlflowClient()
    version = client.get_model_version("synthvit-vit", "1")
    assert version.tags[registry.ARM_TAG] == "scratch" and version.tags[registry.MODEL_TAG] == TINY.summary()
    assert version.description == f"finetune.init=scratch; {TINY.summary()}; held-out top-1 0.4000"
    assert "ViT of 2 blocks, width 32" in version.description  # not just timm's vit_tiny_patch16_224
    signature = mlflow.models.get_model_info("models:/synthvit-vit/1").signature
    assert signature.inputs.inputs[0].shape == (-1, 3, 32, 32) and signature.outputs.inputs[0].shape == (-1, 10)
    # evaluate, which runs after finetune registered it, adds the test top-1 to the versions of its checkpoint only.
    other = store / "other.pt"
    other.write_bytes(b"another model")
    registry.record_test_score("synthvit-vit", other, 0.9)
    registry.record_test_score("synthvit-vit", checkpoint, 0.3811)
    version = client.get_model_version("synthvit-vit", "1")
    assert version.tags[registry.TEST_TAG] == "0.381100"
    assert version.description.endswith("; held-out top-1 0.4000; test top-1 0.3811")


def test_registered_model_loads_by_alias(checkpoint, cifar_small, store, capsys):
    from synthvit.models import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(checkpoint))
    assert log_and_register(checkpoint, model) == "1"
    # A second fine-tune (another model) becomes version 2 and takes the alias.
    torch.manual_seed(1)
    other = create_model(TINY, num_classes=10)
    other_path = store / "other.pt"
    save_checkpoint(other_path, other, TINY, load_checkpoint(checkpoint)["classes"])
    assert log_and_register(other_path, other) == "2"
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("synthvit-vit", "current").version) == "2"
    version = client.get_model_version("synthvit-vit", "2")
    assert version.tags.get("dvc.stage") == "finetune"

    # The alias resolves to the second model: same answers as its checkpoint file.
    images = [str(p) for p in sorted((cifar_small / "test").glob("*/*.jpg"))[:6]]
    code, by_alias, err = cli(capsys, "predict", *images, "--model", "models:/synthvit-vit@current", "--json")
    assert code == 0, err
    assert by_alias == cli(capsys, "predict", *images, "--model", other_path, "--json")[1]
    assert len(by_alias.splitlines()) == 6
    by_version = cli(capsys, "predict", *images, "--model", "models:/synthvit-vit/1", "--json")[1]
    assert by_version == cli(capsys, "predict", *images, "--model", checkpoint, "--json")[1]
    assert by_version != by_alias

    code, out, err = cli(capsys, "predict", images[0], "--model", "models:/synthvit-vit@nope")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: cannot load models:/synthvit-vit@nope from the MLflow store")


def test_registry_uri_without_a_store_says_what_to_do(checkpoint, store, capsys):
    code, out, err = cli(capsys, "predict", checkpoint, "--model", "models:/synthvit-vit@current")
    assert code == 2
    assert err.strip() == (
        f"error: cannot load models:/synthvit-vit@current: there is no MLflow store at "
        f"{store}/mlflow.db; run the pipeline (the finetune stage registers the model), "
        "set MLFLOW_TRACKING_URI to your server, or pass --model a checkpoint file"
    )
    assert not (store / "mlflow.db").exists()


def test_registry_params_are_validated():
    tracking_params = parse_params({}).tracking
    assert (tracking_params.registered_model, tracking_params.model_alias) == ("synthvit-vit", "current")
    assert parse_params({"tracking": {"registered_model": ""}}).tracking.registered_model == ""
    for key, value, message in [
        ("model_alias", "latest", "not 'latest' or v<N>, which MLflow reserves"),
        ("model_alias", "v3", "not 'latest' or v<N>"),
        ("model_alias", "my alias", "letters, digits, _ and -"),
        ("registered_model", "team/model", "without '/', ':'"),
    ]:
        with pytest.raises(ConfigError, match=f"tracking.{key}={value!r} is invalid"):
            parse_params({"tracking": {key: value}})
        with pytest.raises(ConfigError, match=message):
            parse_params({"tracking": {key: value}})
