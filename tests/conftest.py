"""Fixtures every test group shares: real CIFAR-10 images (../shared/datasets/cifar10 or
$SYNTHVIT_CIFAR10), a fresh repository to run the pipeline in, a headless browser.
Plain helpers live in tests/helpers/."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import mlflow
import pytest
from filelock import FileLock

from helpers.browser import CHROMEDRIVER, CHROMIUM, CHROMIUM_FLAGS, browser_available
from helpers.repo import STAGES, TINY, copy_subset, dvc, find_cifar10, git, snapshot_repo, stages_run, unavailable

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest-xdist worker per core: one compute thread each (and in the stages they start,
    # which inherit it), or the workers' OpenMP threads fight over the same cores and each runs several times slower.
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")


@pytest.fixture(scope="session")
def cifar10_root() -> Path:
    """The real CIFAR-10 ImageFolder. Missing: skipped on a laptop, an error in CI."""
    root = find_cifar10()
    if root is None:
        unavailable("real CIFAR-10 ImageFolder not found: set SYNTHVIT_CIFAR10 or put it at ../shared/datasets/cifar10")
    return root


@pytest.fixture
def small_imagefolder(cifar10_root, tmp_path) -> Path:
    return copy_subset(cifar10_root, tmp_path / "cifar_small", train_per_class=6, test_per_class=3)


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    """A fresh git repo holding this working tree's files (tracked and new), as a clone would."""
    return snapshot_repo(tmp_path / "repo")


@pytest.fixture(scope="session")
def tiny_pipeline(cifar10_root, tmp_path_factory, worker_id) -> dict:
    """A repository in which `dvc exp run -n tiny` ran every stage of the tiny pipeline on 600 real training and
    200 test images, with a DVC remote configured and committed: built once per test run, for every test that
    needs a built pipeline (the xdist workers share it through a lock). Tests never change it: they copy it
    (`copy_repo`: git history, experiments, DVC cache and MLflow store). {"repo", "data", "overrides", "output"
    (what `dvc exp run` printed)}."""
    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":  # one folder above the workers' own: the same for all of them, new each run
        shared = shared.parent
    root = shared / "tiny-pipeline"
    with FileLock(str(shared / "tiny-pipeline.lock")):
        if not (root / "built.txt").is_file():
            shutil.rmtree(root, ignore_errors=True)  # what a build that failed left
            data = copy_subset(cifar10_root, root / "cifar", train_per_class=60, test_per_class=20)
            # A launcher other than plain `python` is exec'd by synthvit.training.launch (python3: this interpreter).
            overrides = [
                *TINY,
                "data.name=imagefolder",
                f"data.root={data}",
                "data.val_fraction=0.2",
                "runtime.launcher=python3",
            ]
            repo = snapshot_repo(root / "repo")
            # A team's DVC remote (a local folder, as S3 or SSH storage would be), committed: a test that pushes
            # the experiment uses it (test_restore_from_cache.py).
            dvc(repo, "remote", "add", "-d", "team", str(root / "dvc-remote"))
            git("commit", "-qam", "team DVC remote", cwd=repo)
            output = dvc(repo, "exp", "run", "-n", "tiny", *[arg for o in overrides for arg in ("-S", o)])
            assert stages_run(output) == STAGES, output[-4000:]
            (root / "output.txt").write_text(output)
            (root / "overrides.txt").write_text("\n".join(overrides))
            (root / "built.txt").write_text("built\n")
    return {
        "repo": root / "repo",
        "data": root / "cifar",
        "overrides": (root / "overrides.txt").read_text().splitlines(),
        "output": (root / "output.txt").read_text(),
    }


@pytest.fixture
def browser():
    missing = browser_available()
    if missing:
        unavailable(f"headless browser not installed ({missing}): run `make browser-deps` and `make test`")
    from selenium import webdriver  # only when a browser test runs: selenium is a test-only install
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="synthvit-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))  # explicit paths: nothing is downloaded
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_mlflow_uri_left_behind():
    """MLflow keeps the tracking and registry URIs a test set in process globals: reset both after each
    test, so a later test's MlflowClient(uri) does not read a registry that no longer exists."""
    yield
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def pytest_collection_modifyitems(items):
    """A test that builds a repository for DVC or drives a browser is an end-to-end test (`e2e`), whatever its
    folder: `make test-fast` leaves them out."""
    for item in items:
        if {"repo_copy", "browser", "tiny_pipeline"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
