"""The web demo: its classifier in-process, then the real server driven from a real headless Chromium.

The browser test needs Debian's chromium and chromium-driver (`make browser-deps`) and
selenium (requirements-test.txt). Without them it is skipped on a laptop and fails in CI.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from helpers.browser import ARTIFACTS
from helpers.repo import copy_subset
from helpers.servers import free_port, running_server
from helpers.training import tiny_finetuned_checkpoint
from synthvit.commands.app import TOP_K, classify
from synthvit.commands.predict import load_model, predict_files
from synthvit.config import ModelConfig
from synthvit.models import create_model, save_checkpoint
from synthvit.tracking import registry, runs

TINY = ModelConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.0)


@pytest.fixture(scope="module")
def images(cifar10_root, tmp_path_factory) -> Path:
    return copy_subset(cifar10_root, tmp_path_factory.mktemp("cifar") / "cifar", train_per_class=8, test_per_class=2)


@pytest.fixture(scope="module")
def checkpoint(images, tmp_path_factory) -> Path:
    """A tiny ViT fine-tuned for a few epochs on 80 real CIFAR-10 images."""
    return tiny_finetuned_checkpoint(images / "train", tmp_path_factory.mktemp("model") / "finetune.pt", TINY)


def expected(checkpoint: Path, image: Path) -> dict:
    """What `synthvit predict` says about the image."""
    loaded = load_model(str(checkpoint))
    return next(predict_files(loaded, [image], TOP_K, torch.device("cpu")))


def test_classifier_answers_as_predict_does(checkpoint, images, tmp_path):
    loaded = load_model(str(checkpoint))
    image = sorted((images / "test/ship").iterdir())[0]
    out = classify(loaded, str(image), max_upload_bytes=50_000)
    want = expected(checkpoint, image)
    assert out["top1"] == f"{want['class']} ({want['confidence']:.2%})"
    assert list(out["scores"]) == [t["class"] for t in want["top_k"]] and len(out["scores"]) == TOP_K
    assert list(out["scores"].values()) == pytest.approx([t["confidence"] for t in want["top_k"]])
    assert out["image"].shape == (224, 224, 3) and out["overlay"].shape == (224, 224, 3)
    assert (out["overlay"] != out["image"]).any()

    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    refused = classify(loaded, str(text), 50_000)
    assert refused["message"].startswith("Not an image this app can read (notes.jpg)") and refused["scores"] is None
    big = tmp_path / "big.png"
    big.write_bytes(image.read_bytes() + bytes(60_000))
    assert (
        classify(loaded, str(big), 50_000)["message"]
        == f"File too large: {big.stat().st_size / 2**20:.3g} MB; the limit is 0.0477 MB."
    )
    assert classify(loaded, None, 50_000)["message"] == "Upload an image to classify it."


def test_classifier_without_attention_for_a_cnn(images, tmp_path):
    cnn = ModelConfig(name="resnet10t", img_size=32, patch_size=None, embed_dim=None, depth=None, num_heads=None)
    path = tmp_path / "cnn.pt"
    save_checkpoint(path, create_model(cnn, 10), cnn, [f"c{i}" for i in range(10)])
    out = classify(load_model(str(path)), str(sorted((images / "test/cat").iterdir())[0]), 10**6)
    assert out["overlay"] is None and "Attention overlay unavailable" in out["message"] and len(out["scores"]) == 5


# ---- the real server and a real browser ---------------------------------------------------


@pytest.fixture
def registered(checkpoint, tmp_path, monkeypatch) -> Path:
    """An MLflow store (under a fake repo root) where the model is registered as synthvit-vit@current."""
    from synthvit.models import load_checkpoint, model_from_checkpoint

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runs, "pipeline_key", lambda: "dvc-1-1")
    try:
        with runs.stage_run("finetune", {}, "unit"):
            registry.log_model(
                model_from_checkpoint(load_checkpoint(checkpoint)), checkpoint, "synthvit-vit", "current"
            )
    finally:  # stage_run sets both process-wide; leave neither to later tests
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    return tmp_path


@pytest.fixture
def server(registered):
    """`synthvit app` serving the registered model on a free localhost port, upload limit 50 kB."""
    port = free_port()
    log = registered / "app.log"
    env = {**os.environ, "DVC_ROOT": str(registered), "PYTHONUNBUFFERED": "1"}
    command = [
        str(Path(sys.executable).parent / "synthvit"),
        "app",
        "--model",
        "models:/synthvit-vit@current",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-upload-mb",
        "0.05",
    ]
    url = f"http://127.0.0.1:{port}/"
    with running_server(command, url, log, env=env, cwd=registered):
        yield url


def test_app_in_a_real_browser(server, browser, checkpoint, images, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    ARTIFACTS.mkdir(exist_ok=True)
    wait = WebDriverWait(browser, 60)

    def open_page():
        browser.get(server)
        return wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#upload input[type=file]"))

    def top1_text():
        return browser.find_element(By.CSS_SELECTOR, "#top1 textarea, #top1 input").get_attribute("value")

    try:
        # A real CIFAR-10 test image: the page's top-1 is what `synthvit predict` says.
        image = sorted((images / "test/horse").iterdir())[0]
        open_page().send_keys(str(image))
        shown = wait.until(lambda d: top1_text())
        want = expected(checkpoint, image)
        assert shown == f"{want['class']} ({want['confidence']:.2%})"
        assert "Classified as" in browser.find_element(By.ID, "status").text
        labels = browser.find_element(By.ID, "scores").text
        assert all(t["class"] in labels for t in want["top_k"])
        assert "synthvit-vit@current" in browser.find_element(By.ID, "model-info").text
        overlay = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#overlay img"))
        assert overlay[0].get_attribute("src")
        browser.save_screenshot(str(ARTIFACTS / "app_prediction.png"))

        # Not an image: a message on the page, no prediction.
        text = tmp_path / "notes.txt"
        text.write_text("hello")
        open_page().send_keys(str(text))
        wait.until(lambda d: "Not an image" in d.find_element(By.ID, "status").text)
        assert top1_text() == ""
        browser.save_screenshot(str(ARTIFACTS / "app_not_an_image.png"))

        # Over the upload limit (50 kB): the server refuses it and the page says so.
        big = tmp_path / "big.jpg"
        big.write_bytes(image.read_bytes() + os.urandom(120_000))
        open_page().send_keys(str(big))
        wait.until(lambda d: "exceed the maximum allowed size" in d.find_element(By.TAG_NAME, "body").text)
        assert top1_text() == ""
        browser.save_screenshot(str(ARTIFACTS / "app_too_large.png"))
    except Exception:
        browser.save_screenshot(str(ARTIFACTS / "app_failure.png"))
        raise
