"""Real servers for tests: any process answering on localhost (`running_server`), and a real
`mlflow server` started, stopped and started again on the same port and store, optionally
behind MLflow's basic-auth app (`MlflowServer`)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else f"({path} not written)"


class MlflowServer:
    """`mlflow server` on `backend_uri`, serving artifacts from `folder`/server-artifacts.

    With `auth_config` (a basic_auth.ini), it runs MLflow's basic-auth app
    (`--app-name basic-auth`, the `mlflow[auth]` extra).
    """

    def __init__(self, backend_uri: str, folder: Path, auth_config: Path | None = None):
        self.backend_uri, self.auth_config = backend_uri, auth_config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.artifacts = folder / "server-artifacts"
        self.workdir = folder / "server"
        self.log = folder / "mlflow-server.log"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 300, extra_env: dict | None = None) -> None:
        command = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            self.backend_uri,
            "--artifacts-destination",
            str(self.artifacts),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, **(extra_env or {})}
        if self.auth_config:
            command += ["--app-name", "basic-auth"]
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(self.auth_config)
        with open(self.log, "a") as out:
            # Its own session: the server's uvicorn workers are stopped with it.
            self.process = subprocess.Popen(
                command, cwd=self.workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout  # creating a fresh store's schema takes a while on 2 cores
        while True:
            assert self.process.poll() is None, (
                f"mlflow server exited with {self.process.returncode}:\n{tail(self.log)}"
            )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"mlflow server not healthy after {timeout} s:\n{tail(self.log)}"
            time.sleep(0.5)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        # The worker processes of its session go with it; wait until the port is really closed.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.2)


@contextlib.contextmanager
def running_server(command: list[str], ready_url: str, log: Path, timeout: float = 120, **popen):
    """A server process answering 200 on `ready_url`, stopped with all its children afterwards."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                pytest.fail(f"{command[0]} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{command[0]} did not answer on {ready_url} in {timeout:.0f} s:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # its own session: the server's workers stop with it
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
