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

from helpers.browser import CHROMEDRIVER, CHROMIUM, CHROMIUM_FLAGS, browser_available
from helpers.repo import copy_subset, find_cifar10, snapshot_repo, unavailable

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
        if {"repo_copy", "browser"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
