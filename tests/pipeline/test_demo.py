"""`make demo` at tiny size: both arms as DVC experiments, the comparison, the MLflow store, its UI.

The real Makefile target runs in a fresh git repo (INSTALLED= skips the venv; the
tools come from this environment's PATH), with tiny overrides through DEMO_ARGS: a
2-block ViT, 10 fractal categories, 300 real CIFAR-10 images. The browser test opens
`mlflow server` on the store it leaves and reads both arms' test top-1 from the runs
table, in the headless Chromium of tests/test_app.py.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from helpers.browser import ARTIFACTS
from helpers.repo import TINY, copy_subset, dvc, pipeline_env, snapshot_repo, stages_run
from helpers.servers import free_port, running_server
from synthvit.commands import arms as compare_arms
from synthvit.commands.experiments import Experiment
from synthvit.tracking import registry, summary
from synthvit.tracking import store as mlflow_store
from synthvit.tracking.summary import EXPERIMENT_TAGS

pytestmark = pytest.mark.e2e

NAME = "tiny"
ARMS = {f"{NAME}-synthetic": "pretrained", f"{NAME}-scratch": "scratch"}
# The demo's own sizes are overridden (the last -S of a key wins): all 20 training images per class.
# The per-epoch curve on 5 of the 10 test images per class; evaluate scores all 10.
TINY_DEMO = [
    *TINY,
    "data.train_per_class=0",
    "finetune.epochs=3",
    "data.num_workers=1",
    "finetune.curve_test_per_class=5",
]


@pytest.fixture(scope="module")
def demo(cifar10_root, tmp_path_factory) -> dict:
    """The repo after `make demo` at tiny size, and what make printed."""
    tmp = tmp_path_factory.mktemp("demo")
    repo = snapshot_repo(tmp / "repo")
    data = copy_subset(cifar10_root, tmp / "cifar", train_per_class=20, test_per_class=10)
    args = " ".join(f"-S {o}" for o in [*TINY_DEMO, "data.name=imagefolder", f"data.root={data}"])
    started = time.monotonic()
    result = subprocess.run(
        ["make", "demo", "INSTALLED=", f"DEMO_NAME={NAME}", f"DEMO_ARGS={args}"],
        cwd=repo,
        env=pipeline_env(repo),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    print(f"tiny make demo: {time.monotonic() - started:.0f} s")
    return {"repo": repo, "output": output, "data": data}


def dvc_experiments(repo: Path) -> dict[str, dict]:
    """`dvc exp show --json`'s data (params, metrics) by experiment name."""
    shown = json.loads(
        subprocess.run(
            [sys.executable, "-m", "dvc", "exp", "show", "--json"],
            cwd=repo,
            check=True,
            capture_output=True,
            text=True,
            env=pipeline_env(repo),
        ).stdout
    )
    return {
        rev["name"]: rev["data"] for baseline in shown for e in baseline.get("experiments") or [] for rev in e["revs"]
    }


def test_demo_runs_both_arms_and_compares_them(demo):
    repo, output = demo["repo"], demo["output"]
    # Two experiments; the second reuses the fractals and the pre-training, as DVC says.
    first, second = output.split(f"dvc exp run -n {NAME}-scratch", 1)
    assert "Running stage 'generate_synthetic'" in first
    assert re.findall(r"Running stage '(\w+)'", first) == [
        "generate_synthetic",
        "pretrain",
        "finetune",
        "evaluate",
        "visualize",
    ]
    assert re.findall(r"Running stage '(\w+)'", second) == ["finetune", "evaluate", "visualize"]
    for stage in ("generate_synthetic", "pretrain"):
        assert f"Stage '{stage}' didn't change, skipping" in second
    experiments = dvc_experiments(repo)
    assert set(ARMS) <= set(experiments)
    test_metrics = {name: experiments[name]["metrics"]["metrics/evaluate.json"]["data"] for name in ARMS}
    curve_metrics = {name: experiments[name]["metrics"]["metrics/finetune.json"]["data"] for name in ARMS}
    for name, init in ARMS.items():
        assert experiments[name]["params"]["params.yaml"]["data"]["finetune"]["init"] == init
        assert test_metrics[name]["num_images"] == 100  # the whole (tiny) test split
        assert curve_metrics[name]["eval_images"] == 50  # the curve's first 5 per class

    # The table (terminal, files): both arms, their difference, a legend naming the experiments.
    table = pd.read_csv(repo / "plots/demo/arms.csv")
    assert table["arm"].tolist() == ["A", "B", "A - B"] and table["experiment"].tolist()[:2] == list(ARMS)
    for i, name in enumerate(ARMS):
        assert table["test_top1"][i] == pytest.approx(test_metrics[name]["top1"])
        assert table["test_top5"][i] == pytest.approx(test_metrics[name]["top5"])
        assert table["test_ece"][i] == pytest.approx(test_metrics[name]["ece"])
        assert table["finetune_s"][i] > 0 and table["cost_s"][i] > table["finetune_s"][i]
    assert table["test_top1"][2] == pytest.approx(table["test_top1"][0] - table["test_top1"][1])
    pretrain = json.loads((repo / "metrics/pretrain.json").read_text())
    assert table["pretrain_acc"][0] == pytest.approx(pretrain["train_acc"]) and pd.isna(table["pretrain_acc"][1])
    assert table["pretrain_s"][0] > 0 and pd.isna(table["pretrain_s"][1])  # scratch needs no pre-training
    closing = output[output.index("dvc exp run -n tiny-scratch") :]
    assert f"A = {NAME}-synthetic   B = {NAME}-scratch" in closing
    lines = closing.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("arm "))
    end = next(i for i, line in enumerate(lines) if line.startswith("A = "))
    table_lines = lines[start:end]
    assert max(map(len, table_lines)) <= 120 and f"{100 * test_metrics[f'{NAME}-synthetic']['top1']:.2f}%" in closing

    # The README's narrowed `dvc exp show` fits a 120-column terminal.
    narrowed = subprocess.run(
        [
            sys.executable,
            "-m",
            "dvc",
            "exp",
            "show",
            "--drop",
            ".*",
            "--keep",
            "Experiment|top1$|ece$|finetune.init|eval_acc$",
            "--no-pager",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**pipeline_env(repo), "COLUMNS": "120"},
        check=True,
    ).stdout
    assert max(map(len, narrowed.splitlines())) <= 120 and f"{NAME}-scratch" in narrowed
    assert "top1" in narrowed and "…" not in narrowed  # nothing cut short to fit

    # MLflow: both executions, their headline metrics and defining params on the parent runs.
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # the demo's registry, whatever ran before
    experiment = client.get_experiment_by_name("synthvit")
    assert {k: experiment.tags.get(k) for k in EXPERIMENT_TAGS} == EXPERIMENT_TAGS
    parents = {
        run.data.tags["dvc.exp_name"]: run
        for run in client.search_runs([experiment.experiment_id])
        if mlflow_store.PIPELINE_TAG in run.data.tags
    }
    assert set(parents) == set(ARMS)
    for name, init in ARMS.items():
        parent = parents[name].data
        assert parents[name].info.run_name == f"{init} · {name}"  # what differs first
        assert parent.params["finetune.init"] == init and parent.params["model.depth"] == "2"
        assert parent.metrics["test_top1"] == pytest.approx(test_metrics[name]["top1"], abs=1e-4)
        assert parent.metrics["test_ece"] == pytest.approx(test_metrics[name]["ece"], abs=1e-4)
        assert all(parent.metrics[f"wall_{s}_s"] > 0 for s in ("finetune", "evaluate", "visualize"))
        curve = client.get_metric_history(parents[name].info.run_id, "finetune_eval_acc")
        assert [m.step for m in curve] == [1, 2, 3]
        assert curve[-1].value == pytest.approx(curve_metrics[name]["eval_acc"])
        artifacts = {a.path for a in client.list_artifacts(parents[name].info.run_id, "comparison")}
        assert {"comparison/arms.png", "comparison/arms.md"} <= artifacts
    synthetic, scratch = (parents[name].data.metrics for name in ARMS)
    assert synthetic["pretrain_train_acc"] == pytest.approx(pretrain["train_acc"], abs=1e-4)
    timing = json.loads((repo / "metrics/timing/pretrain.json").read_text())
    assert synthetic["wall_pretrain_s"] == pytest.approx(timing["wall_seconds"], abs=0.1)
    assert "pretrain_train_acc" not in scratch and "wall_pretrain_s" not in scratch  # it did not pre-train

    # The serving alias never lands on the worse arm: it is on the version that scored best on the held-out images.
    versions = client.search_model_versions("name = 'synthvit-vit'")
    scores = {v.version: float(v.tags[registry.SCORE_TAG]) for v in versions}
    assert len(scores) == 2 and len({v.tags[registry.HELDOUT_TAG] for v in versions}) == 1
    served = client.get_model_version_by_alias("synthvit-vit", "current")
    assert scores[served.version] == max(scores.values())


def figure_data(repo, first: str, second: str):
    """What arms.png shows for two arms, read back from the figure: the pre-training curve, the fine-tuning
    curves and the stars at the whole-test scores."""
    previous = Path.cwd()
    os.chdir(repo)
    try:
        arms = [compare_arms.Arm(label, Experiment.named(name)) for label, name in zip("AB", (first, second))]
        table = compare_arms.arms_table([arm.row() for arm in arms])
        figure = compare_arms.arms_figure(arms, table)
    finally:
        os.chdir(previous)
    pretraining, finetuning = figure.axes
    return {
        "pretrain": [list(line.get_ydata()) for line in pretraining.get_lines()],
        "curves": [list(line.get_ydata()) for line in finetuning.get_lines()],
        "stars": [float(points.get_offsets()[0][1]) for points in finetuning.collections],
        "title": finetuning.get_title(),
    }


def test_arms_figure_shows_what_the_arms_measured(demo):
    repo = demo["repo"]
    shown = figure_data(repo, f"{NAME}-synthetic", f"{NAME}-scratch")
    history = {name: pd.read_csv(repo / f"plots/{name}/history.csv") for name in ("pretrain", "finetune")}
    assert shown["pretrain"] == [pytest.approx(list(history["pretrain"]["train_acc"]))]
    assert len(shown["curves"]) == 2 and shown["curves"][1] == pytest.approx(list(history["finetune"]["eval_acc"]))
    table = pd.read_csv(repo / "plots/demo/arms.csv")
    assert shown["stars"] == pytest.approx(list(table["test_top1"][:2]))
    assert "on 50 images" in shown["title"] and "all 100 test images" in shown["title"]  # a subset, said so


def test_arms_figure_when_the_pretraining_was_restored(demo):
    """A third arm whose fractals and pre-training DVC takes from its cache: the comparison still shows the
    pre-training curve and cost (read from the restored outputs), not a blank panel."""
    repo = demo["repo"]
    args = [a for o in [*TINY_DEMO, "data.name=imagefolder", f"data.root={demo['data']}"] for a in ("-S", o)]
    recipe = subprocess.run(
        ["synthvit", "recipe", "demo"], cwd=repo, env=pipeline_env(repo), capture_output=True, text=True, check=True
    ).stdout.split()
    # The workspace holds the last arm's params (scratch): name the init, as `make demo` does.
    output = dvc(
        repo,
        "exp",
        "run",
        "-n",
        f"{NAME}-again",
        *recipe,
        "-S",
        "finetune.init=pretrained",
        *args,
        "-S",
        "finetune.lr=1e-3",
    )
    assert stages_run(output) == ["finetune", "evaluate", "visualize"]  # pre-training not run again
    shown = figure_data(repo, f"{NAME}-again", f"{NAME}-scratch")
    pretrain = pd.read_csv(repo / "plots/pretrain/history.csv")
    assert shown["pretrain"] == [pytest.approx(list(pretrain["train_acc"]))]
    assert len(shown["stars"]) == 2


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


def test_mlflow_ui_shows_both_arms_test_top1(demo, mlflow_ui, browser):
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
    pretrain_seconds = {}

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

    def both_rows_rendered(_):
        names, top1 = column("attributes.`Run Name`"), column("metrics.`test_top1`")
        shown = {names[row]: top1[row] for row in names if row in top1 and top1[row]}
        pretrain_seconds.update(
            {names[row]: seconds for row, seconds in column("metrics.`wall_pretrain_s`").items() if row in names}
        )
        return shown if {f"{init} · {name}" for name, init in ARMS.items()} <= set(shown) else None

    try:
        # The link `synthvit compare --arms` prints: the runs table (not GenAI traces), headline columns.
        browser.set_window_size(2400, 1000)  # the table renders only the columns in view
        browser.get(summary.ui_url(mlflow_ui, experiment.experiment_id))
        shown = WebDriverWait(browser, 90).until(both_rows_rendered)
        browser.save_screenshot(str(ARTIFACTS / "mlflow_runs_table.png"))
        assert "/runs" in browser.current_url
        for run in parents.values():
            name = run.info.run_name
            assert float(shown[name]) == pytest.approx(run.data.metrics["test_top1"], abs=1e-3), shown
        # The pre-training's cost is in the pre-trained arm's row, and only there.
        synthetic, scratch = (f"{init} · {name}" for name, init in ARMS.items())
        assert float(pretrain_seconds[synthetic]) > 0 and pretrain_seconds.get(scratch) in (None, "", "-"), (
            pretrain_seconds
        )
    except Exception:
        browser.save_screenshot(str(ARTIFACTS / "mlflow_ui_failure.png"))
        raise


def test_an_offline_demo_fails_within_seconds_before_any_work(tmp_path):
    """The default demo downloads CIFAR-10; where that cannot happen it stops at once, saying what to do,
    instead of after minutes of fractals and pre-training (downloads sent to a closed local port here)."""
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
    assert "Traceback" not in output and not (repo / "data/synthetic").exists()  # no fractals were rendered


def test_the_demo_is_locked_in_results_and_checked_again(demo):
    """`synthvit results lock` copies both arms into results/; `results check` runs one again (in a temporary
    copy) and finds the same number, so what results/ publishes is what the experiment gave."""
    repo = demo["repo"]
    env = pipeline_env(repo)

    def synthvit(*args) -> str:
        result = subprocess.run(["synthvit", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout

    for name, arm in (("synthetic", f"{NAME}-synthetic"), ("scratch", f"{NAME}-scratch")):
        synthvit("results", "lock", arm, "--as", f"tiny/{name}-s0", "--row", name)
    (repo / "results/tiny/group.yaml").write_text("table: arms\narms: [synthetic, scratch]\n")
    locked = repo / "results/tiny/synthetic-s0"
    evaluation = dvc_experiments(repo)[f"{NAME}-scratch"]["metrics"]["metrics/evaluate.json"]["data"]
    scratch = json.loads((repo / "results/tiny/scratch-s0/metrics/evaluate.json").read_text())
    assert scratch == evaluation
    run = yaml.safe_load((locked / "run.yaml").read_text())
    assert run["experiment"] == f"{NAME}-synthetic" and run["seed"] == 0 and run["row"] == "synthetic"
    assert run["machine"]["cpu_cores"] >= 1 and run["wall_seconds"]["total"] > run["wall_seconds"]["pretrain"] > 0
    assert (locked / "history/pretrain.csv").is_file() and (locked / "dvc.lock").is_file()
    shown = synthvit("results", "show", "tiny", "--csv")
    table = pd.read_csv(io.StringIO(shown))
    synthetic = json.loads((locked / "metrics/evaluate.json").read_text())
    assert table["difference"][0] == pytest.approx(synthetic["top1"] - scratch["top1"])
    checked = synthvit("results", "check", "tiny/synthetic-s0")
    assert f"recorded test_top1 {synthetic['top1']:.4f}, again {synthetic['top1']:.4f} (identical)" in checked
