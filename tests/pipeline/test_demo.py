"""`make demo` at tiny size: three arms as DVC experiments from a released backbone, the comparison, the
MLflow store, its UI.

The real Makefile target runs in a fresh git repo (INSTALLED= skips the venv; the tools come from this
environment's PATH), with tiny overrides through DEMO_ARGS: a 2-block ViT released the way the study's
backbone is (`synthvit export` into results/), 200 real CIFAR-10 images. No fractals are rendered and
nothing pre-trains: the demo restores the long pre-training from git. The browser test opens `mlflow
server` on the store it leaves and reads the arms' test top-1 from the runs table, in headless Chromium.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from helpers.browser import ARTIFACTS
from helpers.repo import TINY, copy_subset, git, pipeline_env, snapshot_repo, stages_run
from helpers.servers import free_port, running_server
from synthvit.commands.compare import arm_row, arms_table
from synthvit.commands.export import export
from synthvit.commands.reporting import figures
from synthvit.commands.reporting.sources import Experiment
from synthvit.config import ModelConfig
from synthvit.models import create_model, save_checkpoint
from synthvit.tracking import registry, summary
from synthvit.tracking import store as mlflow_store
from synthvit.tracking.summary import EXPERIMENT_TAGS

pytestmark = pytest.mark.e2e

NAME = "tiny"
ARMS = {f"{NAME}-pretrained": "pretrained", f"{NAME}-scratch": "scratch", f"{NAME}-mimetic": "mimetic"}
BACKBONE = "results/tiny-backbone"
# The demo's own sizes are overridden (the last -S of a key wins): all 20 training images per class,
# the per-epoch curve on 5 of the 10 test images per class; evaluate scores all 10.
TINY_DEMO = [
    *TINY,
    f"finetune.backbone={BACKBONE}",
    "data.train_per_class=0",
    "finetune.epochs=3",
    "data.num_workers=1",
    "finetune.curve_test_per_class=5",
]


def released_backbone(repo: Path) -> Path:
    """A tiny backbone released as the study's is: a checkpoint exported into results/, committed."""
    settings = dict(item.split("=") for item in TINY if item.startswith("model."))
    cfg = ModelConfig(img_size=32, drop_path_rate=0.0, **{k[6:]: int(v) for k, v in settings.items()})
    checkpoint = repo / "pretrain.pt"
    save_checkpoint(checkpoint, create_model(cfg, 10), cfg, [f"fractal-{i}" for i in range(10)], stage="pretrain")
    export(checkpoint, repo / BACKBONE)
    checkpoint.unlink()
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "a tiny released backbone", cwd=repo)
    return repo / BACKBONE


def make_demo(repo: Path, data: Path, *extra: str) -> str:
    args = " ".join(f"-S {o}" for o in [*TINY_DEMO, "data.name=imagefolder", f"data.root={data}"])
    result = subprocess.run(
        ["make", "demo", "INSTALLED=", f"DEMO_NAME={NAME}", f"DEMO_ARGS={args}", *extra],
        cwd=repo,
        env=pipeline_env(repo),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    return output


@pytest.fixture(scope="module")
def demo(cifar10_root, tmp_path_factory) -> dict:
    """The repo after `make demo` at tiny size, and what make printed."""
    tmp = tmp_path_factory.mktemp("demo")
    repo = snapshot_repo(tmp / "repo")
    released_backbone(repo)
    # Class folders named 0..9, as Fashion-MNIST and many digit sets ship: names stay text end to end (issue 33).
    digits = [str(i) for i in range(10)]
    data = copy_subset(cifar10_root, tmp / "cifar", train_per_class=20, test_per_class=10, folders=digits)
    started = time.monotonic()
    output = make_demo(repo, data)
    print(f"tiny make demo: {time.monotonic() - started:.0f} s")
    return {"repo": repo, "output": output, "data": data}


def dvc_experiments(repo: Path) -> dict[str, dict]:
    """`dvc exp show --json`'s data (params, metrics) by experiment name."""
    command = [sys.executable, "-m", "dvc", "exp", "show", "--json"]
    shown = json.loads(
        subprocess.run(command, cwd=repo, check=True, capture_output=True, text=True, env=pipeline_env(repo)).stdout
    )
    return {
        rev["name"]: rev["data"] for baseline in shown for e in baseline.get("experiments") or [] for rev in e["revs"]
    }


def test_demo_fine_tunes_three_arms_from_the_released_backbone_and_compares_them(demo):
    repo, output = demo["repo"], demo["output"]
    per_class = pd.read_csv(repo / "plots/evaluate/per_class.csv", dtype={"class": str})
    assert per_class["class"].tolist() == [str(i) for i in range(10)]  # numeric folders, kept as their names
    # Three experiments, each only fine-tuning and evaluating: the pre-training comes from results/.
    for name in ARMS:
        arm = output.split(f"== {name}", 1)[1].split("== ", 1)[0]
        assert stages_run(arm) == ["finetune", "evaluate"], name
    assert not (repo / "data/synthetic").exists() and not (repo / "models/pretrain.pt").exists()
    experiments = dvc_experiments(repo)
    test_metrics = {name: experiments[name]["metrics"]["metrics/evaluate.json"]["data"] for name in ARMS}
    for name, init in ARMS.items():
        assert experiments[name]["params"]["params.yaml"]["data"]["finetune"]["init"] == init
        assert test_metrics[name]["num_images"] == 100  # the whole (tiny) test split
        assert experiments[name]["metrics"]["metrics/finetune.json"]["data"]["eval_images"] == 50  # 5 per class
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["finetune"]
    assert any(dep["path"] == BACKBONE for dep in lock["deps"])  # dvc.lock names the backbone it started from

    # The table (terminal, files): every arm, the first minus each other, a legend naming the experiments.
    table = pd.read_csv(repo / "plots/demo/arms.csv")
    assert table["arm"].tolist() == ["A", "B", "C", "A - B", "A - C"]
    assert table["experiment"].tolist()[:3] == list(ARMS)
    for i, name in enumerate(ARMS):
        assert table["test_top1"][i] == pytest.approx(test_metrics[name]["top1"])
        assert table["test_ece"][i] == pytest.approx(test_metrics[name]["ece"])
        assert table["wall_finetune_s"][i] > 0 and table["cost_s"][i] > table["wall_finetune_s"][i]
    assert table["test_top1"][3] == pytest.approx(table["test_top1"][0] - table["test_top1"][1])
    assert table["test_top1"][4] == pytest.approx(table["test_top1"][0] - table["test_top1"][2])
    assert table["wall_pretrain_s"].isna().all()  # nothing pre-trained
    closing = output[output.index("synthvit compare --arms") :]
    assert f"A = {NAME}-pretrained   B = {NAME}-scratch   C = {NAME}-mimetic" in closing
    lines = closing.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("arm "))
    end = next(i for i, line in enumerate(lines) if line.startswith("A = "))
    assert max(map(len, lines[start:end])) <= 120
    assert f"{100 * test_metrics[f'{NAME}-pretrained']['top1']:.2f}%" in closing

    # The README's narrowed `dvc exp show` fits a 120-column terminal.
    keep = "Experiment|top1$|ece$|finetune.init|eval_acc$"
    narrowed = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--drop", ".*", "--keep", keep, "--no-pager"],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**pipeline_env(repo), "COLUMNS": "120"},
        check=True,
    ).stdout
    assert max(map(len, narrowed.splitlines())) <= 120 and f"{NAME}-scratch" in narrowed
    assert "top1" in narrowed and "…" not in narrowed  # nothing cut short to fit


def test_mlflow_holds_each_arm_and_one_run_with_the_answer(demo):
    repo = demo["repo"]
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # the demo's registry, whatever ran before
    experiment = client.get_experiment_by_name("synthvit")
    assert {k: experiment.tags.get(k) for k in EXPERIMENT_TAGS} == EXPERIMENT_TAGS
    runs = client.search_runs([experiment.experiment_id])
    parents = {run.data.tags["dvc.exp_name"]: run for run in runs if mlflow_store.PIPELINE_TAG in run.data.tags}
    assert set(parents) == set(ARMS)
    table = pd.read_csv(repo / "plots/demo/arms.csv").set_index("arm")
    for (name, init), label in zip(ARMS.items(), "ABC"):
        parent = parents[name]
        assert parent.info.run_name == f"{init} · {name}"  # what differs first
        assert parent.data.params["finetune.init"] == init and parent.data.params["model.depth"] == "2"
        assert parent.data.metrics["test_top1"] == pytest.approx(table.loc[label, "test_top1"], abs=1e-4)
        assert [m.step for m in client.get_metric_history(parent.info.run_id, "finetune_eval_acc")] == [1, 2, 3]
        # no arm pre-trained here (the backbone is released): none logs the fractals' or pre-training's params
        assert not {key.split(".")[0] for key in parent.data.params} & {"pretrain", "synthetic"}
        assert ("finetune.backbone" in parent.data.params) == (init == "pretrained")
    # One run holds the comparison: the differences as metrics, the table and figure at the top of its artifacts
    # (MLflow's compare view shows only those).
    (comparison,) = [run for run in runs if run.data.tags.get("synthvit.comparison") == "true"]
    assert comparison.data.metrics["test_top1 A - B"] == pytest.approx(table.loc["A - B", "test_top1"], abs=1e-6)
    assert comparison.data.metrics["test_top1 A - C"] == pytest.approx(table.loc["A - C", "test_top1"], abs=1e-6)
    assert comparison.data.params["arm.C"] == f"{NAME}-mimetic (mimetic)"
    artifacts = {a.path for a in client.list_artifacts(comparison.info.run_id)}
    assert {"arms.png", "arms.md", "arms.csv"} <= artifacts

    # Registered versions say which arm each is and how it scored; the serving alias is on the best held-out one.
    versions = client.search_model_versions("name = 'synthvit-vit'")
    assert sorted(v.tags[registry.ARM_TAG] for v in versions) == sorted(ARMS.values())
    for version in versions:
        assert f"finetune.init={version.tags[registry.ARM_TAG]}" in version.description
        assert "ViT of 2 blocks" in version.description and "test top-1" in version.description
    scores = {v.version: float(v.tags[registry.SCORE_TAG]) for v in versions}
    assert len({v.tags[registry.HELDOUT_TAG] for v in versions}) == 1
    served = client.get_model_version_by_alias("synthvit-vit", "current")
    assert scores[served.version] == max(scores.values())


def test_arms_figure_shows_what_the_arms_measured(demo):
    repo = demo["repo"]
    previous = Path.cwd()
    os.chdir(repo)
    try:
        arms = [(label, Experiment.named(name)) for label, name in zip("ABC", ARMS)]
        table = arms_table([arm_row(label, experiment) for label, experiment in arms])
        pretraining, finetuning = figures.arms_figure(arms, table).axes
    finally:
        os.chdir(previous)
    assert not pretraining.get_lines()  # a released backbone: no pre-training curve in this repository
    history = pd.read_csv(repo / "plots/finetune/history.csv")  # the last arm's
    curves = [list(line.get_ydata()) for line in finetuning.get_lines()]
    assert len(curves) == 3 and curves[2] == pytest.approx(list(history["eval_acc"]))
    stars = [float(points.get_offsets()[0][1]) for points in finetuning.collections]
    assert stars == pytest.approx(list(pd.read_csv(repo / "plots/demo/arms.csv")["test_top1"][:3]))
    assert "on 50 images" in finetuning.get_title() and "all 100 test images" in finetuning.get_title()


def test_pretrain_fresh_pretrains_the_backbone_again(demo, tmp_path):
    """`make demo PRETRAIN=fresh`: the pre-trained arm renders the fractals and pre-trains (the study's recipe,
    here at tiny size); the next arm finds that pre-training in DVC's run cache."""
    repo = snapshot_repo(tmp_path / "repo")
    output = make_demo(repo, demo["data"], "PRETRAIN=fresh", "DEMO_ARMS=pretrained scratch")
    pretrained, scratch = output.split(f"== {NAME}-scratch", 1)
    assert stages_run(pretrained) == ["generate_synthetic", "pretrain", "finetune", "evaluate"]
    assert stages_run(scratch) == ["finetune", "evaluate"] and "Stage 'pretrain' didn't change" in scratch
    heldout = json.loads((repo / "metrics/pretrain.json").read_text())
    assert heldout["eval_images"] == 10 * 10  # pretrain.heldout_per_class instances of each of 10 categories


@pytest.fixture
def mlflow_ui(demo):
    """`mlflow server` (what `mlflow ui` runs) on the demo's store, on a free localhost port."""
    port = free_port()
    log = demo["repo"] / "mlflow-ui.log"
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{demo['repo'] / 'mlflow.db'}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # No background job runner: its GenAI jobs would add a dozen processes on a 2-core machine.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    url = f"http://127.0.0.1:{port}"
    with running_server(command, f"{url}/health", log, env=env, cwd=demo["repo"]):
        yield url


def test_mlflow_ui_shows_every_arms_test_top1(demo, mlflow_ui, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    client = MlflowClient(f"sqlite:///{demo['repo'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("synthvit")
    parents = {
        run.info.run_id: run
        for run in client.search_runs([experiment.experiment_id])
        if mlflow_store.PIPELINE_TAG in run.data.tags
    }
    ARTIFACTS.mkdir(exist_ok=True)

    def column(col_id: str) -> dict[str, str]:
        """Rendered cells of one runs-table column by row id (MLflow's runs table is an ag-grid), last text line
        (a run name cell starts with its colour's hex code, hidden)."""
        cells = browser.find_elements(By.CSS_SELECTOR, f'.ag-row [col-id="{col_id}"]')
        return {
            cell.find_element(By.XPATH, "./ancestor::div[@row-id]").get_attribute("row-id"): (
                cell.text.splitlines() or [""]
            )[-1]
            for cell in cells
        }

    def every_row_rendered(_):
        names, top1 = column("attributes.`Run Name`"), column("metrics.`test_top1`")
        shown = {names[row]: top1[row] for row in names if row in top1 and top1[row]}
        return shown if {f"{init} · {name}" for name, init in ARMS.items()} <= set(shown) else None

    try:
        # The link `synthvit compare --arms` prints: the runs table (not GenAI traces), headline columns.
        browser.set_window_size(2400, 1000)  # the table renders only the columns in view
        browser.get(summary.ui_url(mlflow_ui, experiment.experiment_id))
        shown = WebDriverWait(browser, 90).until(every_row_rendered)
        browser.save_screenshot(str(ARTIFACTS / "mlflow_runs_table.png"))
        assert "/runs" in browser.current_url
        for run in parents.values():
            name = run.info.run_name
            assert float(shown[name]) == pytest.approx(run.data.metrics["test_top1"], abs=1e-3), shown
    except Exception:
        browser.save_screenshot(str(ARTIFACTS / "mlflow_ui_failure.png"))
        raise


def test_an_offline_demo_fails_within_seconds_before_any_work(tmp_path):
    """The default demo downloads CIFAR-10; where that cannot happen it stops at once, saying what to do,
    before any fine-tuning (downloads sent to a closed local port here)."""
    repo = snapshot_repo(tmp_path / "repo")
    env = {**pipeline_env(repo), "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    started = time.monotonic()
    result = subprocess.run(
        ["make", "demo", "INSTALLED=", "DEMO_NAME=offline"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode != 0 and seconds < 60, (seconds, output[-3000:])
    assert "error: cifar10 is not in" in output and "download server cannot be reached" in output
    assert "Traceback" not in output and not (repo / "models/finetune.pt").exists()  # nothing trained


def test_the_demo_is_locked_in_results_and_checked_again(demo):
    """`synthvit results lock` copies arms into results/; `results show` pairs them by seed; `results check`
    runs one again (in a temporary copy) and finds the same number, so what results/ publishes is what the
    experiment gave."""
    repo = demo["repo"]
    env = pipeline_env(repo)

    def synthvit(*args) -> str:
        result = subprocess.run(["synthvit", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout

    for name, arm in (("pretrained", f"{NAME}-pretrained"), ("scratch", f"{NAME}-scratch")):
        synthvit("results", "lock", arm, "--as", f"tiny/{name}-s0")
    (repo / "results/tiny/group.yaml").write_text("table: rows\npaired: [scratch]\n")
    locked = repo / "results/tiny/pretrained-s0"
    evaluation = dvc_experiments(repo)[f"{NAME}-scratch"]["metrics"]["metrics/evaluate.json"]["data"]
    scratch = json.loads((repo / "results/tiny/scratch-s0/metrics/evaluate.json").read_text())
    assert scratch == evaluation
    run = yaml.safe_load((locked / "run.yaml").read_text())
    assert run["experiment"] == f"{NAME}-pretrained" and run["seed"] == 0 and run["row"] == "pretrained"
    assert run["machine"]["cpu_cores"] >= 1 and run["wall_seconds"]["total"] > run["wall_seconds"]["finetune"] > 0
    assert (locked / "history/finetune.csv").is_file() and (locked / "dvc.lock").is_file()
    table = pd.read_csv(io.StringIO(synthvit("results", "show", "tiny", "--csv")), dtype=str).set_index("row")
    pretrained = json.loads((locked / "metrics/evaluate.json").read_text())
    assert table.loc["pretrained", "- scratch (95% CI)"] == f"{100 * (pretrained['top1'] - scratch['top1']):+.2f}"
    checked = synthvit("results", "check", "tiny/pretrained-s0")
    assert f"recorded test_top1 {pretrained['top1']:.4f}, again {pretrained['top1']:.4f} (identical)" in checked
