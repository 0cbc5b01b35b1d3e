"""Team tracking: the real pipeline logs to a real `mlflow server` backed by a real PostgreSQL.

A throwaway PostgreSQL cluster (Debian's server binaries, `make postgres-deps`) and an
MLflow server behind MLflow's basic-auth app, serving artifacts, run for the test; the
pipeline only gets MLFLOW_TRACKING_URI=http://... and a team member's
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, as that member's shell would. A
client without the password gets HTTP 401 and can neither read nor delete runs.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.repo import STAGES, TINY, copy_subset, pipeline_env, unavailable
from helpers.servers import MlflowServer, free_port, tail

pytestmark = pytest.mark.e2e

SERVER_TOOLS = ("initdb", "pg_ctl", "postgres")
# postgres refuses to run as root; as root the cluster runs as the first of these accounts.
CLUSTER_ACCOUNTS = ("postgres", "nobody")
# Smaller than test_pipeline_e2e: this test is about where the runs go, not about learning.
OVERRIDES = {**dict(o.split("=", 1) for o in TINY), "pretrain.epochs": "1", "finetune.epochs": "2"}


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
        unavailable(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or in "
            "/usr/lib/postgresql/*/bin: run `make postgres-deps` (apt-get install postgresql)"
        )
    account = None
    if os.geteuid() == 0:
        account = next((name for name in CLUSTER_ACCOUNTS if has_account(name)), None)
        if account is None or shutil.which("runuser") is None:
            unavailable(
                f"running as root, and postgres refuses root: need `runuser` and one of the accounts "
                f"{', '.join(CLUSTER_ACCOUNTS)} to run the cluster as"
            )
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
        done = as_owner(
            "initdb",
            "-D",
            str(data),
            "-U",
            user,
            f"--pwfile={password_file}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )
        assert done.returncode == 0, f"initdb failed:\n{done.stdout}{done.stderr}"
        options = f"-p {port} -k {cluster} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
        done = as_owner("pg_ctl", "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
        assert done.returncode == 0, f"pg_ctl start failed:\n{done.stdout}{done.stderr}\n{tail(log)}"
        done = subprocess.run(
            [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, "mlflow"],
            env={**os.environ, "PGPASSWORD": password},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"createdb failed:\n{done.stderr}"
        yield Postgres(f"postgresql://{user}:{password}@127.0.0.1:{port}/mlflow", port, user, password)
    finally:
        if (data / "postmaster.pid").is_file():
            as_owner("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        if account:
            shutil.rmtree(cluster, ignore_errors=True)


@dataclass
class Team:
    server: MlflowServer
    user: str
    password: str
    admin_password: str


@pytest.fixture
def team_server(postgres, tmp_path, monkeypatch):
    """`mlflow server --app-name basic-auth` on the PostgreSQL store, with one team member's account;
    stopped afterwards.

    Set up as README "Team tracking" says: a basic_auth.ini whose users live in the same
    PostgreSQL, `default_permission = EDIT`, the admin password from the environment at
    first start, a secret key for its CSRF protection, the member's account created by the admin through
    MLflow's auth client.
    """
    from mlflow.server import get_app_client

    admin_password, password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    config = tmp_path / "basic_auth.ini"
    config.write_text(
        "[mlflow]\ndefault_permission = EDIT\n"
        f"database_uri = {postgres.uri}\nadmin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    server = MlflowServer(postgres.uri, tmp_path, auth_config=config)
    # Creating the schema in a fresh database takes a while on 2 cores.
    server.start(
        timeout=300,
        extra_env={
            "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(24),
        },
    )
    try:
        with monkeypatch.context() as admin:
            admin.setenv("MLFLOW_TRACKING_USERNAME", "admin")
            admin.setenv("MLFLOW_TRACKING_PASSWORD", admin_password)
            get_app_client("basic-auth", tracking_uri=server.url).create_user("alice", password)
        yield Team(server, "alice", password, admin_password)
    finally:
        server.stop()


def run_stage(repo, stage: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, f"stages/{stage}.py"], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )


def test_pipeline_logs_to_team_server(team_server, postgres, repo_copy, cifar10_root, tmp_path, monkeypatch):
    import mlflow
    import psycopg
    import requests
    from mlflow import MlflowClient

    from synthvit.commands.predict import checkpoint_from_mlflow
    from synthvit.models import load_checkpoint
    from synthvit.tracking.store import PIPELINE_TAG

    repo, url = repo_copy, team_server.server.url
    anonymous = {**pipeline_env(repo), "MLFLOW_TRACKING_URI": url}
    member = {
        **anonymous,
        "MLFLOW_TRACKING_USERNAME": team_server.user,
        "MLFLOW_TRACKING_PASSWORD": team_server.password,
    }

    # Without the password, or with a wrong one: one line before any work.
    result = run_stage(repo, "generate_synthetic", anonymous)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        f"error: MLflow tracking server {url} requires a login (HTTP 401): set MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD to your account on it (its admin creates accounts)"
    ), result.stderr[-3000:]
    result = run_stage(
        repo, "generate_synthetic", {**member, "MLFLOW_TRACKING_PASSWORD": "not-" + team_server.password}
    )
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        f"error: MLflow tracking server {url} refused user 'alice' (HTTP 401: wrong password or unknown user): "
        "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    ), result.stderr[-3000:]
    assert not (repo / "data/synthetic").exists()

    data = copy_subset(cifar10_root, tmp_path / "cifar", train_per_class=10, test_per_class=5)
    overrides = {**OVERRIDES, "data.name": "imagefolder", "data.root": str(data)}
    args = [arg for key, value in overrides.items() for arg in ("-S", f"{key}={value}")]
    result = subprocess.run(
        ["dvc", "exp", "run", "-n", "team", *args], cwd=repo, env=member, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, f"dvc exp run failed:\n{(result.stdout + result.stderr)[-6000:]}"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", team_server.user)  # this test reads the runs as the member
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", team_server.password)

    # Nothing went to the embedded SQLite default.
    assert not (repo / "mlflow.db").exists()
    assert not (repo / "mlartifacts").exists()

    client = MlflowClient(url, registry_uri=url)  # never a registry set by another test
    experiment = client.get_experiment_by_name("synthvit")
    assert experiment.artifact_location == f"mlflow-artifacts:/{experiment.experiment_id}"  # the server's, proxied
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if PIPELINE_TAG in r.data.tags]
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
    assert sorted(Path(f.path).name for f in figures) == sorted(
        f"{name}.png"
        for name in ["pretrain_curves", "finetune_curves", "confusion_matrix", "misclassified", "synthetic_samples"]
    )
    evaluate_id = children["evaluate"].info.run_id
    downloaded = client.download_artifacts(evaluate_id, "per_class.csv", str(tmp_path / "download"))
    assert Path(downloaded).read_bytes() == (repo / "plots/evaluate/per_class.csv").read_bytes()
    stored = team_server.server.artifacts / experiment.experiment_id
    assert len(list(stored.rglob("figures/*.png"))) == 5
    assert list(stored.rglob("MLmodel")), "the fine-tuned model is logged as an MLflow model on the server"

    # The registered model resolves through the server and holds the stage's checkpoint.
    version = client.get_model_version_by_alias("synthvit-vit", "current")
    assert str(version.version) == "1" and version.run_id == finetune_id  # an int or a str, by MLflow client path
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
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
    with psycopg.connect(
        host="127.0.0.1", port=postgres.port, user=postgres.user, password=postgres.password, dbname="mlflow"
    ) as db:
        rows = db.execute(
            "SELECT name, status FROM runs WHERE experiment_id = %s", (int(experiment.experiment_id),)
        ).fetchall()
    assert sorted(rows) == sorted([(name, "FINISHED") for name in [*STAGES, parent.info.run_name]])

    # A stranger, without the password or with a wrong one, is refused: runs, artifacts and the model alias
    # can be neither read nor deleted.
    run_id = children["finetune"].info.run_id
    api = f"{url}/api/2.0/mlflow"
    for auth in (None, (team_server.user, "wrong-password-1234")):
        attempts = [
            requests.get(f"{api}/runs/get", params={"run_id": run_id}, auth=auth, timeout=30),
            requests.post(f"{api}/runs/delete", json={"run_id": run_id}, auth=auth, timeout=30),
            requests.get(
                f"{url}/api/2.0/mlflow-artifacts/artifacts/{experiment.experiment_id}/{run_id}/artifacts/history.csv",
                auth=auth,
                timeout=30,
            ),
            requests.get(
                f"{api}/registered-models/alias",
                params={"name": "synthvit-vit", "alias": "current"},
                auth=auth,
                timeout=30,
            ),
            requests.delete(f"{api}/registered-models/delete", json={"name": "synthvit-vit"}, auth=auth, timeout=30),
        ]
        assert [r.status_code for r in attempts] == [401] * len(attempts), [(r.url, r.status_code) for r in attempts]
    assert client.get_run(run_id).info.lifecycle_stage == "active"
    assert str(client.get_model_version_by_alias("synthvit-vit", "current").version) == "1"

    # `synthvit predict` with the model alias: a wrong password is one line.
    image = next((data / "test").rglob("*.jpg"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "synthvit.commands.cli",
            "predict",
            str(image),
            "--model",
            "models:/synthvit-vit@current",
        ],
        cwd=repo,
        env={**member, "MLFLOW_TRACKING_PASSWORD": "wrong-password-1234"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith(
        f"error: MLflow tracking server {url} refused user 'alice' (HTTP 401"
    ), result.stderr[-3000:]
