"""`make demo` at tiny size: both arms as DVC experiments, the comparison, the MLflow store, its UI.

The real Makefile target runs in a fresh git repo (INSTALLED= skips the venv; the
tools come from this environment's PATH), with tiny overrides through DEMO_ARGS: a
2-block ViT, 10 fractal categories, 300 real CIFAR-10 images. The browser test opens
`mlflow server` on the store it leaves and reads both arms' test top-1 from the runs
table, in the headless Chromium of tests/test_app.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from conftest import copy_subset, pipeline_env, running_server, snapshot_repo
from test_app import ARTIFACTS, browser, free_port  # noqa: F401 - browser is a fixture
from test_pipeline_e2e import TINY

from synthvit import execution_summary, tracking
from synthvit.execution_summary import EXPERIMENT_TAGS

pytestmark = pytest.mark.e2e

NAME = "tiny"
ARMS = {f"{NAME}-synthetic": "pretrained", f"{NAME}-scratch": "scratch"}
# The demo's own sizes are overridden (the last -S of a key wins): all 20 training images per class.
# The per-epoch curve on 5 of the 10 test images per class; evaluate scores all 10.
TINY_DEMO = [*TINY, "data.train_per_class=0", "finetune.epochs=3", "data.num_workers=1", "finetune.curve_test_per_class=5"]


@pytest.fixture(scope="module")
def demo(cifar10_root, tmp_path_factory) -> dict:
    """The repo after `make demo` at tiny size, and what make printed."""
    tmp = tmp_path_factory.mktemp("demo")
    repo = snapshot_repo(tmp / "repo")
    data = copy_subset(cifar10_root, tmp / "cifar", train_per_class=20, test_per_class=10)
    args = " ".join(f"-S {o}" for o in [*TINY_DEMO, "data.name=imagefolder", f"data.root={data}"])
    started = time.monotonic()
    result = subprocess.run(["make", "demo", "INSTALLED=", f"DEMO_NAME={NAME}", f"DEMO_ARGS={args}"], cwd=repo,
                            env=pipeline_env(repo), capture_output=True, text=True, timeout=1200)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    print(f"tiny make demo: {time.monotonic() - started:.0f} s")
    return {"repo": repo, "output": output}


def test_demo_runs_both_arms_and_compares_them(demo):
    repo, output = demo["repo"], demo["output"]
    # Two experiments; the second reuses the fractals and the pre-training, as DVC says.
    first, second = output.split(f"dvc exp run -n {NAME}-scratch", 1)
    assert re.findall(r"Running stage '(\w+)'", first) == ["generate_synthetic", "pretrain", "finetune", "evaluate", "visualize"]
    assert re.findall(r"Running stage '(\w+)'", second) == ["finetune", "evaluate", "visualize"]
    for stage in ("generate_synthetic", "pretrain"):
        assert f"Stage '{stage}' didn't change, skipping" in second
    shown = json.loads(subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=repo, check=True,
                                      capture_output=True, text=True, env=pipeline_env(repo)).stdout)
    experiments = {rev["name"]: rev["data"] for baseline in shown for e in baseline.get("experiments") or [] for rev in e["revs"]}
    assert set(ARMS) <= set(experiments)
    test_metrics = {name: experiments[name]["metrics"]["metrics/evaluate.json"]["data"] for name in ARMS}
    curve_metrics = {name: experiments[name]["metrics"]["metrics/finetune.json"]["data"] for name in ARMS}
    for name, init in ARMS.items():
        assert experiments[name]["params"]["params.yaml"]["data"]["finetune"]["init"] == init
        assert test_metrics[name]["num_images"] == 100  # the whole (tiny) test split
        assert curve_metrics[name]["eval_images"] == 50  # the curve's first 5 per class

    # The table (terminal and files) and the figure, with both arms and their difference.
    table = pd.read_csv(repo / "plots/demo/arms.csv")
    assert table["arm"].tolist()[:2] == list(ARMS) and table["arm"][2].startswith("difference")
    for i, name in enumerate(ARMS):
        assert table["test_top1"][i] == pytest.approx(test_metrics[name]["top1"])
        assert table["test_top5"][i] == pytest.approx(test_metrics[name]["top5"])
        assert table["test_ece"][i] == pytest.approx(test_metrics[name]["ece"])
        assert table["wall_finetune_s"][i] > 0 and table["wall_total_s"][i] > table["wall_finetune_s"][i]
    assert table["test_top1"][2] == pytest.approx(table["test_top1"][0] - table["test_top1"][1])
    pretrain = json.loads((repo / "metrics/pretrain.json").read_text())
    assert table["pretrain_train_acc"][0] == pytest.approx(pretrain["train_acc"]) and pd.isna(table["pretrain_train_acc"][1])
    assert "test top-1" in output and f"difference ({NAME}-synthetic - {NAME}-scratch)" in output
    assert (repo / "plots/demo/arms.png").stat().st_size > 20_000

    # MLflow: both executions, their headline metrics and defining params on the parent runs.
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("synthvit")
    assert {k: experiment.tags.get(k) for k in EXPERIMENT_TAGS} == EXPERIMENT_TAGS
    parents = {run.data.tags["dvc.exp_name"]: run for run in client.search_runs([experiment.experiment_id])
               if tracking.PIPELINE_TAG in run.data.tags}
    assert set(parents) == set(ARMS)
    for name, init in ARMS.items():
        parent = parents[name].data
        assert parent.params["finetune.init"] == init and parent.params["model.depth"] == "2"
        assert parent.metrics["test_top1"] == pytest.approx(test_metrics[name]["top1"])
        assert parent.metrics["test_ece"] == pytest.approx(test_metrics[name]["ece"])
        assert all(parent.metrics[f"wall_{s}_s"] > 0 for s in ("finetune", "evaluate", "visualize"))
        curve = client.get_metric_history(parents[name].info.run_id, "finetune_eval_acc")
        assert [m.step for m in curve] == [1, 2, 3] and curve[-1].value == pytest.approx(curve_metrics[name]["eval_acc"])
        artifacts = {a.path for a in client.list_artifacts(parents[name].info.run_id, "comparison")}
        assert {"comparison/arms.png", "comparison/arms.md"} <= artifacts
    synthetic, scratch = (parents[name].data.metrics for name in ARMS)
    assert synthetic["pretrain_train_acc"] == pytest.approx(pretrain["train_acc"]) and synthetic["wall_pretrain_s"] > 0
    assert "pretrain_train_acc" not in scratch and "wall_pretrain_s" not in scratch  # it did not pre-train


@pytest.fixture
def mlflow_ui(demo):
    """`mlflow server` (what `mlflow ui` runs) on the demo's store, on a free localhost port."""
    port = free_port()
    log = demo["repo"] / "mlflow-ui.log"
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
               f"sqlite:///{demo['repo'] / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # No background job runner: its GenAI jobs would add a dozen processes on a 2-core machine.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    url = f"http://127.0.0.1:{port}"
    with running_server(command, f"{url}/health", log, env=env, cwd=demo["repo"]):
        yield url


def test_mlflow_ui_shows_both_arms_test_top1(demo, mlflow_ui, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    client = MlflowClient(f"sqlite:///{demo['repo'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("synthvit")
    parents = {run.info.run_id: run for run in client.search_runs([experiment.experiment_id])
               if tracking.PIPELINE_TAG in run.data.tags}
    ARTIFACTS.mkdir(exist_ok=True)

    def column(col_id: str) -> dict[str, str]:
        """Rendered cells of one runs-table column by row id (MLflow's runs table is an ag-grid), last text line
        (a run name cell starts with its colour's hex code, hidden)."""
        cells = browser.find_elements(By.CSS_SELECTOR, f'.ag-row [col-id="{col_id}"]')
        return {cell.find_element(By.XPATH, "./ancestor::div[@row-id]").get_attribute("row-id"):
                (cell.text.splitlines() or [""])[-1] for cell in cells}

    def both_rows_rendered(_):
        names, top1 = column("attributes.`Run Name`"), column("metrics.`test_top1`")
        shown = {names[row]: top1[row] for row in names if row in top1 and top1[row]}
        return shown if {f"pipeline {name}" for name in ARMS} <= set(shown) else None

    try:
        # The link `synthvit compare --arms` prints: the runs table (not GenAI traces), headline columns.
        browser.set_window_size(2400, 1000)  # the table renders only the columns in view
        browser.get(execution_summary.ui_url(mlflow_ui, experiment.experiment_id))
        shown = WebDriverWait(browser, 90).until(both_rows_rendered)
        browser.save_screenshot(str(ARTIFACTS / "mlflow_runs_table.png"))
        assert "/runs" in browser.current_url
        for run in parents.values():
            name = f"pipeline {run.data.tags['dvc.exp_name']}"
            assert float(shown[name]) == pytest.approx(run.data.metrics["test_top1"], abs=1e-3), shown
    except Exception:
        browser.save_screenshot(str(ARTIFACTS / "mlflow_ui_failure.png"))
        raise
