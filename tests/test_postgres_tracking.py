"""Team tracking: the real pipeline logs to a real `mlflow server` backed by a real PostgreSQL.

A throwaway PostgreSQL cluster (Debian's server binaries, `make postgres-deps`) and an
MLflow server that serves artifacts run for the test; the pipeline only gets
MLFLOW_TRACKING_URI=http://..., as a team member's shell would.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import copy_subset, pipeline_env
from test_pipeline_e2e import STAGES, TINY

pytestmark = pytest.mark.e2e

SERVER_TOOLS = ("initdb", "pg_ctl", "postgres")
# postgres refuses to run as root; as root the cluster runs as the first of these accounts.
CLUSTER_ACCOUNTS = ("postgres", "nobody")
# Smaller than test_pipeline_e2e: this test is about where the runs go, not about learning.
OVERRIDES = {**dict(o.split("=", 1) for o in TINY), "pretrain.epochs": "1", "finetune.epochs": "2"}


def unavailable(message: str):
    """Skipped on a laptop; a failure in CI, where `make test` installs what is missing."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def postgres_bin_dir() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres: from PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    initdb = shutil.which("initdb")
    candidates = [Path(initdb).resolve().parent] if initdb else []
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    candidates += [Path(p) for p in versions if Path(p).parent.name.isdigit()]
    for folder in candidates:
        if all((folder / tool).is_file() for tool in SERVER_TOOLS):
            return folder
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else f"({path} not written)"


def has_account(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@dataclass
class Postgres:
    uri: str  # postgresql://user:password@127.0.0.1:port/mlflow
    port: int
    user: str
    password: str


@pytest.fixture
def postgres(tmp_path):
    """A throwaway PostgreSQL cluster on a free port of 127.0.0.1 with a database `mlflow`, stopped afterwards."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        unavailable("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or in "
                    "/usr/lib/postgresql/*/bin: run `make postgres-deps` (apt-get install postgresql)")
    account = None
    if os.geteuid() == 0:
        account = next((name for name in CLUSTER_ACCOUNTS if has_account(name)), None)
        if account is None or shutil.which("runuser") is None:
            unavailable(f"running as root, and postgres refuses root: need `runuser` and one of the accounts "
                        f"{', '.join(CLUSTER_ACCOUNTS)} to run the cluster as")
        # pytest's tmp_path sits in a root-only folder; the cluster gets a folder that account owns.
        cluster = Path(tempfile.mkdtemp(prefix="synthvit-pg-"))
        shutil.chown(cluster, account, account)
    else:
        cluster = tmp_path / "postgres"
        cluster.mkdir()

    user, password, port = "synthvit", secrets.token_hex(12), free_port()
    password_file = cluster / "password"
    password_file.write_text(password + "\n")
    if account:
        shutil.chown(password_file, account, account)
    data, log = cluster / "data", cluster / "server.log"

    def as_owner(tool: str, *args: str) -> subprocess.CompletedProcess:
        run_as = ["runuser", "-u", account, "--"] if account else []
        return subprocess.run([*run_as, str(bin_dir / tool), *args], capture_output=True, text=True, timeout=120)

    try:
        # Password logins over TCP, as on a real server; no fsync: the cluster is thrown away.
        done = as_owner("initdb", "-D", str(data), "-U", user, f"--pwfile={password_file}", "--auth-local=trust",
                        "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
        assert done.returncode == 0, f"initdb failed:\n{done.stdout}{done.stderr}"
        options = f"-p {port} -k {cluster} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
        done = as_owner("pg_ctl", "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
        assert done.returncode == 0, f"pg_ctl start failed:\n{done.stdout}{done.stderr}\n{tail(log)}"
        done = subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, "mlflow"],
                              env={**os.environ, "PGPASSWORD": password}, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"createdb failed:\n{done.stderr}"
        yield Postgres(f"postgresql://{user}:{password}@127.0.0.1:{port}/mlflow", port, user, password)
    finally:
        if (data / "postmaster.pid").is_file():
            as_owner("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        if account:
            shutil.rmtree(cluster, ignore_errors=True)


@dataclass
class MlflowServer:
    url: str
    artifacts: Path  # --artifacts-destination


@pytest.fixture
def mlflow_server(postgres, tmp_path):
    """`mlflow server` on the PostgreSQL store, serving artifacts from a folder of its own; stopped afterwards."""
    port = free_port()
    artifacts, workdir, log = tmp_path / "server-artifacts", tmp_path / "server", tmp_path / "mlflow-server.log"
    workdir.mkdir()
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", postgres.uri,
               "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with open(log, "w") as out:
        # Its own session: the server's uvicorn workers are stopped with it.
        server = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240  # creating the schema in a fresh database takes a while on 2 cores
        while True:
            assert server.poll() is None, f"mlflow server exited with {server.returncode}:\n{tail(log)}"
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"mlflow server not healthy after 240 s:\n{tail(log)}"
            time.sleep(1)
        yield MlflowServer(url, artifacts)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def test_pipeline_logs_to_team_server(mlflow_server, postgres, repo_copy, cifar10_root, tmp_path, monkeypatch):
    import mlflow
    import psycopg
    from mlflow import MlflowClient

    from synthvit import tracking
    from synthvit.models import load_checkpoint
    from synthvit.predict import checkpoint_from_mlflow

    repo = repo_copy
    data = copy_subset(cifar10_root, tmp_path / "cifar", train_per_class=10, test_per_class=5)
    overrides = {**OVERRIDES, "data.name": "imagefolder", "data.root": str(data)}
    env = {**pipeline_env(repo), "MLFLOW_TRACKING_URI": mlflow_server.url}
    args = [arg for key, value in overrides.items() for arg in ("-S", f"{key}={value}")]
    result = subprocess.run(["dvc", "exp", "run", "-n", "team", *args], cwd=repo, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"dvc exp run failed:\n{(result.stdout + result.stderr)[-6000:]}"

    # Nothing went to the embedded SQLite default.
    assert not (repo / "mlflow.db").exists()
    assert not (repo / "mlartifacts").exists()

    client = MlflowClient(mlflow_server.url, registry_uri=mlflow_server.url)  # never a registry set by another test
    experiment = client.get_experiment_by_name("synthvit")
    assert experiment.artifact_location == f"mlflow-artifacts:/{experiment.experiment_id}"  # the server's, proxied
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if tracking.PIPELINE_TAG in r.data.tags]
    assert len(parents) == 1 and len(runs) == 1 + len(STAGES)
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["dvc.exp_name"] == "team"
    children = {r.info.run_name: r for r in runs if r is not parent}
    assert sorted(children) == sorted(STAGES)
    for run in children.values():
        assert run.info.status == "FINISHED", run.info
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["dvc.exp_name"] == "team" and len(run.data.tags["mlflow.source.git.commit"]) == 40

    # The metrics in MLflow are the ones the stages wrote for DVC.
    evaluation = json.loads((repo / "metrics/evaluate.json").read_text())
    assert evaluation["num_images"] == 50
    assert children["evaluate"].data.metrics["top1"] == pytest.approx(evaluation["top1"])
    finetune_id = children["finetune"].info.run_id
    assert [m.step for m in client.get_metric_history(finetune_id, "eval_acc")] == [1, 2]
    assert children["finetune"].data.params["finetune.epochs"] == "2"

    # Artifacts went through the server into its --artifacts-destination, and come back byte for byte.
    figures = client.list_artifacts(children["visualize"].info.run_id, "figures")
    assert sorted(Path(f.path).name for f in figures) == sorted(f"{name}.png" for name in [
        "pretrain_curves", "finetune_curves", "confusion_matrix", "misclassified", "synthetic_samples"])
    evaluate_id = children["evaluate"].info.run_id
    downloaded = client.download_artifacts(evaluate_id, "per_class.csv", str(tmp_path / "download"))
    assert Path(downloaded).read_bytes() == (repo / "plots/evaluate/per_class.csv").read_bytes()
    stored = mlflow_server.artifacts / experiment.experiment_id
    assert len(list(stored.rglob("figures/*.png"))) == 5
    assert list(stored.rglob("MLmodel")), "the fine-tuned model is logged as an MLflow model on the server"

    # The registered model resolves through the server and holds the stage's checkpoint.
    version = client.get_model_version_by_alias("synthvit-vit", "current")
    assert str(version.version) == "1" and version.run_id == finetune_id  # an int or a str, by MLflow client path
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    try:
        served = checkpoint_from_mlflow("models:/synthvit-vit@current")
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    local = load_checkpoint(repo / "models/finetune.pt")
    assert served["classes"] == local["classes"]
    assert served["model_state"].keys() == local["model_state"].keys()
    assert all((served["model_state"][k] == v).all() for k, v in local["model_state"].items())

    # The server's store really is PostgreSQL: the runs are rows there.
    with psycopg.connect(host="127.0.0.1", port=postgres.port, user=postgres.user, password=postgres.password,
                         dbname="mlflow") as db:
        rows = db.execute("SELECT name, status FROM runs WHERE experiment_id = %s",
                          (int(experiment.experiment_id),)).fetchall()
    assert sorted(rows) == sorted([(name, "FINISHED") for name in [*STAGES, parent.info.run_name]])
