"""The demo restores the study's long pre-training from git (results/study/backbone, a folder `synthvit export`
wrote) instead of running it: the backbone is one of the study's locked pre-trainings, it fits the demo's
model, and the demo's plan (DVC's own, for the demo's params) holds no fractals and no pre-training. A shipped
run cache would go stale with any edit to the code pre-training imports; a released backbone does not."""

from __future__ import annotations

import json
import re

import yaml

from helpers.repo import REPO, dvc, snapshot_repo, stages_run
from synthvit.config import apply_overrides, parse_params, read_yaml, recipe_overrides
from synthvit.models import check_same_architecture, load_backbone

BACKBONE = REPO / "results/study/backbone"


def demo_params() -> dict:
    """params.yaml as `dvc exp run $(synthvit recipe demo)` leaves it."""
    base = read_yaml(REPO / "params.yaml")
    return apply_overrides(base, recipe_overrides("demo", baseline=base))


def test_the_released_backbone_is_a_locked_pretraining_of_the_study_and_fits_the_demo(monkeypatch):
    monkeypatch.chdir(REPO)
    released = load_backbone(BACKBONE)
    recipe = released["recipe"]
    sections = ("synthetic", "pretrain", "model")
    made_it = [
        params_file.parent
        for params_file in sorted((REPO / "results/study").glob("pretrained-*/params.yaml"))
        if all(yaml.safe_load(params_file.read_text())[key] == recipe[key] for key in sections)
    ]
    assert made_it, "no locked study run has the released backbone's recipe: export the chosen pre-training again"
    assert released["summary"] == json.loads((made_it[0] / "metrics/pretrain.json").read_text())
    assert released["summary"]["eval_acc"] >= 0.8  # it learned its task: held-out fractal instances
    params = parse_params(demo_params())
    assert params.finetune.backbone == "results/study/backbone" and params.finetune.init == "pretrained"
    check_same_architecture(released, params.model, str(BACKBONE))
    assert sum(f.stat().st_size for f in BACKBONE.iterdir()) <= 10 * 2**20  # it travels in git


def test_the_demo_plan_runs_no_fractals_and_no_pretraining(tmp_path):
    repo = snapshot_repo(tmp_path / "repo")
    (repo / "params.yaml").write_text(yaml.safe_dump(demo_params(), sort_keys=False))
    # DVC's own graph for these params: pre-training is no ancestor of evaluate (a dry `repro evaluate` cannot
    # plan past a finetune.pt that does not exist yet), and a dry repro of finetune runs only finetune.
    assert set(re.findall(r'node\d+\["(\w+)"\]', dvc(repo, "dag", "--md", "evaluate"))) == {"finetune", "evaluate"}
    assert stages_run(dvc(repo, "repro", "--dry", "finetune")) == ["finetune"]
