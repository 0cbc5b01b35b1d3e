"""DDP under a real torchrun (gloo on CPU) matches one process with the same global batch: two
processes on one node, and two nodes of one process each joined by a c10d rendezvous."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers.repo import pipeline_env

TESTS = Path(__file__).parents[1]  # on PYTHONPATH: the worker imports tests/helpers
WORKER = TESTS / "helpers" / "ddp_worker.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def alone(tmp_path_factory) -> dict:
    """The worker's result in one plain process: what every distributed run must match."""
    tmp_path = tmp_path_factory.mktemp("alone")
    single = tmp_path / "single.pt"
    subprocess.run(
        [sys.executable, str(WORKER), str(single)],
        env=worker_env(tmp_path),
        check=True,
        timeout=300,
        capture_output=True,
    )
    return torch.load(single, weights_only=True)


def assert_same_training(one: dict, two: dict) -> None:
    assert one["world"] == 1 and two["world"] == 2
    for name, tensor in one["state"].items():
        # Summation order differs between 1 and 2 processes; Adam turns that into ~1e-5 on weights.
        assert torch.allclose(tensor, two["state"][name], atol=5e-5, rtol=1e-4), name
    for a, b in zip(one["history"], two["history"]):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-5
        assert a["train_acc"] == b["train_acc"] and a["eval_acc"] == b["eval_acc"]
        assert abs(a["eval_loss"] - b["eval_loss"]) < 1e-5


def worker_env(tmp_path) -> dict:
    env = pipeline_env(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    return env


def test_two_processes_match_one(tmp_path, alone):
    env = worker_env(tmp_path)
    double = tmp_path / "double.pt"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(free_port()),
            str(WORKER),
            str(double),
        ],
        env=env,
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert_same_training(alone, torch.load(double, weights_only=True))


def test_two_nodes_match_one(tmp_path, alone):
    """Two torchrun launches, as on two machines: each one process (LOCAL_RANK 0 on both), joined by a
    c10d rendezvous on 127.0.0.1. Only global rank 0 writes, whichever node it landed on."""
    env = worker_env(tmp_path)
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = []
    for node, host in enumerate(("true", "false")):  # the first hosts the rendezvous store, as the head node would
        out = tmp_path / f"node{node}.pt"
        nodes.append(
            (
                out,
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "torch.distributed.run",
                        "--nnodes",
                        "2",
                        "--nproc-per-node",
                        "1",
                        "--rdzv-backend",
                        "c10d",
                        "--rdzv-endpoint",
                        endpoint,
                        "--rdzv-id",
                        "two-nodes",
                        "--rdzv-conf",
                        f"is_host={host}",
                        str(WORKER),
                        str(out),
                    ],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                ),
            )
        )
    for _, process in nodes:
        log = process.communicate(timeout=300)[0]
        assert process.returncode == 0, log[-4000:]
    ranks = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("node*.pt.*.ranks.json"))]
    assert sorted(r["RANK"] for r in ranks) == ["0", "1"] and {r["LOCAL_RANK"] for r in ranks} == {"0"}
    assert [r["RANK"] for r in ranks if r["wrote"]] == ["0"]  # global rank 0 only, not every local rank 0
    written = [out for out, _ in nodes if out.exists()]
    assert len(written) == 1
    assert_same_training(alone, torch.load(written[0], weights_only=True))
