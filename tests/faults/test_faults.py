"""Faults found in seconds with one line: a tracking server that is not there, SIGTERM, damaged files.

The end-to-end versions (a real `mlflow server` stopped and restarted around a stage,
SIGTERM during `dvc repro`) are in test_tracking_outage.py and test_resume_stage.py.
"""

import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from helpers.repo import REPO
from helpers.servers import free_port
from synthvit.config import load_params
from synthvit.data.fractals import load_synthetic
from synthvit.data.images import decode_image
from synthvit.errors import UserError
from synthvit.tracking.health import check_tracking_store
from synthvit.training.resume import read_state


def test_a_server_that_is_not_there_is_one_line_within_seconds():
    import mlflow.utils.credentials  # noqa: F401 - imported before the clock starts: its import is slow on a busy machine

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(UserError) as caught:
        check_tracking_store(url)
    assert time.monotonic() - started < 10  # one attempt, no retries: MLflow's own client retried for 253 s here
    assert str(caught.value) == (
        f"MLflow tracking server {url} does not answer (connection refused): start the server, "
        "or unset MLFLOW_TRACKING_URI to record in the local SQLite store (mlflow.db)"
    )


def test_credentials_in_the_uri_stay_out_of_the_message():
    url = f"http://alice:secret-password@127.0.0.1:{free_port()}"
    with pytest.raises(UserError) as caught:
        check_tracking_store(url)
    assert "secret-password" not in str(caught.value) and "alice:***@127.0.0.1" in str(caught.value)


def test_sigterm_unwinds_like_ctrl_c(tmp_path):
    ready = tmp_path / "ready"
    code = (
        "import pathlib, time\nfrom synthvit.errors import run_main\n"
        f"def main():\n    pathlib.Path({str(ready)!r}).touch()\n"
        "    try:\n        time.sleep(120)\n    finally:\n        print('cleaned up', flush=True)\n"
        "run_main(main)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert out.strip() == "cleaned up"  # `finally` blocks run: atomic writers remove their temporary files
    assert err.strip() == "terminated"


def test_damaged_synthetic_manifest_and_image_name_the_rebuild(tmp_path, monkeypatch):
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")  # the stages of the repository holding the files
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "data/synthetic"
    (folder / "images/c0").mkdir(parents=True)
    manifest = folder / "manifest.json"
    manifest.write_text('{"classes": [{"name": "c0"')  # cut short
    with pytest.raises(UserError) as caught:
        load_synthetic(folder, 16)
    assert str(caught.value) == (
        f"synthetic manifest {manifest} is damaged or foreign (JSONDecodeError); "
        "rebuild it with `dvc repro -f generate_synthetic`"
    )
    image = folder / "images/c0/0.png"
    Image.new("RGB", (16, 16)).save(image)
    image.write_bytes(image.read_bytes()[:30])
    with pytest.raises(UserError) as caught:
        decode_image(image, 16)
    assert str(caught.value).startswith(f"cannot read image {image}: ")
    assert str(caught.value).endswith("; rebuild it with `dvc repro -f generate_synthetic`")


def test_damaged_params_is_one_line(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("seed: 0\nmodel: {depth: 2\n")
    with pytest.raises(UserError) as caught:
        load_params(params)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{params} is not valid YAML (")
    assert message.endswith(f"fix it, or restore the committed one with `git checkout {params}`")


def test_damaged_resume_state_is_removed_with_a_warning(tmp_path, capsys):
    model = torch.nn.Linear(64, 64)
    state = tmp_path / "finetune-0123.pt"
    torch.save(
        {"epoch": 3, "model": model.state_dict(), "optimizer": {}, "scheduler": {}, "history": [{"epoch": 1}]}, state
    )
    assert read_state(state)["epoch"] == 3  # a good one is read
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    assert read_state(state) is None  # the engine then starts over
    assert not state.exists()
    assert (
        f"warning: resume state {state} is damaged (truncated or not a PyTorch file); removed it: training starts over"
    ) in capsys.readouterr().err
    torch.save({"weights": torch.zeros(1)}, state)  # a foreign file
    assert read_state(state) is None and not state.exists()
