"""DVC experiments as the commands read them: what an experiment ran with and what it produced.

Everything comes from DVC, not MLflow: the params and dvc.lock from the experiment's git
commit, and the outputs (metrics, per-epoch histories, timing files) through DVC's file
system from its cache (or a remote). A stage that DVC restored from its run cache
therefore reads exactly like one that ran: its outputs, wall time and machine included.
"""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
from functools import cached_property

import pandas as pd
import yaml
from dvc.api import DVCFileSystem

from synthvit.errors import UserError
from synthvit.files import history_path, metrics_path, timing_path

STAGES = ["generate_synthetic", "pretrain", "finetune", "evaluate", "visualize"]
TRAINING_STAGES = ("pretrain", "finetune")


def dvc_exp_show() -> list:
    """`dvc exp show --json` of the repository here, by the DVC of this environment.

    Not dvc.api.exp_show: in DVC 3.67 it returns the printed table's cells (7-character revs,
    "07:11 PM" creation times without a date, integers as floats, "!" for a missing metric),
    which lose the full rev, the date to order by and the params' types.
    """
    command = [sys.executable, "-m", "dvc", "exp", "show", "--json"]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except OSError as exc:
        raise UserError(f"could not run dvc: {exc}") from None
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise UserError(f"dvc exp show failed: {lines[-1] if lines else f'exit code {result.returncode}'}")
    return json.loads(result.stdout)


def experiment_revs(show: list | None = None) -> dict[str, str]:
    """{experiment name: its commit} of the experiments DVC shows (the current baseline's)."""
    revs = {}
    for baseline in dvc_exp_show() if show is None else show:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                if rev.get("name"):
                    revs[rev["name"]] = rev["rev"]
    return revs


@dataclasses.dataclass
class Experiment:
    """One DVC experiment (or the workspace, rev None): its params, lock and outputs."""

    name: str
    rev: str | None

    @classmethod
    def named(cls, name: str, revs: dict[str, str] | None = None) -> Experiment:
        if name == "workspace":
            return cls(name, None)
        revs = experiment_revs() if revs is None else revs
        if name not in revs:
            known = ", ".join(sorted(revs)[-8:]) or "none"
            raise UserError(f"no DVC experiment {name!r} here (dvc exp show); recent ones: {known}")
        return cls(name, revs[name])

    @cached_property
    def fs(self) -> DVCFileSystem:
        return DVCFileSystem(repo=".", rev=self.rev)

    def exists(self, path) -> bool:
        return self.fs.exists(str(path))

    def text(self, path) -> str:
        try:
            return self.fs.read_text(str(path))
        except FileNotFoundError:
            raise UserError(f"experiment {self.name!r} has no {path}: did its pipeline run that stage?") from None
        except Exception as exc:  # noqa: BLE001 - DVC reports a missing cache object in several ways
            raise UserError(
                f"cannot read {path} of experiment {self.name!r} ({type(exc).__name__}): its outputs are "
                "not in the local DVC cache; `dvc exp pull REMOTE NAME` (or `dvc pull`) first"
            ) from None

    @cached_property
    def params(self) -> dict:
        return yaml.safe_load(self.text("params.yaml")) or {}

    @cached_property
    def lock(self) -> dict:
        return yaml.safe_load(self.text("dvc.lock")) or {} if self.exists("dvc.lock") else {}

    def ran(self, stage: str) -> bool:
        """Whether the experiment's dvc.lock holds the stage (it ran, or DVC restored it)."""
        return stage in (self.lock.get("stages") or {})

    def metrics(self, stage: str) -> dict:
        path = metrics_path(stage)
        return json.loads(self.text(path)) if self.ran(stage) and self.exists(path) else {}

    def history(self, stage: str) -> pd.DataFrame:
        path = history_path(stage)
        return pd.read_csv(io.StringIO(self.text(path))) if self.ran(stage) and self.exists(path) else pd.DataFrame()

    def timing(self, stage: str) -> dict:
        """The stage's timing file (wall seconds, machine); {} for a stage run before timing files existed."""
        path = timing_path(stage)
        return json.loads(self.text(path)) if self.ran(stage) and self.exists(path) else {}

    def param(self, dotted: str, default=None):
        node = self.params
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node
