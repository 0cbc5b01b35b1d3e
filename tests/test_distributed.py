"""DDP under a real torchrun with 2 CPU processes (gloo) matches one process with the same global batch."""

import socket
import subprocess
import sys
from pathlib import Path

import torch

from conftest import pipeline_env

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    env = pipeline_env(tmp_path)
    env["PYTHONPATH"] = str(HERE)
    single = tmp_path / "single.pt"
    double = tmp_path / "double.pt"
    subprocess.run([sys.executable, str(HERE / "ddp_worker.py"), str(single)], env=env, check=True, timeout=300,
                   capture_output=True)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
         str(HERE / "ddp_worker.py"), str(double)],
        env=env, timeout=300, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    one, two = torch.load(single, weights_only=True), torch.load(double, weights_only=True)
    assert one["world"] == 1 and two["world"] == 2
    for name, tensor in one["state"].items():
        # Summation order differs between 1 and 2 processes; Adam turns that into ~1e-5 on weights.
        assert torch.allclose(tensor, two["state"][name], atol=5e-5, rtol=1e-4), name
    for a, b in zip(one["history"], two["history"]):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-5
        assert a["train_acc"] == b["train_acc"] and a["eval_acc"] == b["eval_acc"]
        assert abs(a["eval_loss"] - b["eval_loss"]) < 1e-5
