"""results/: the published numbers. README.md and docs/ show exactly what results/ holds; group tables
compute what they say (the e2e demo test locks real experiments)."""

from __future__ import annotations

import json

import pytest
import yaml

from helpers.repo import REPO
from synthvit.commands import results
from synthvit.commands.comparison import fit_width


def test_readme_and_docs_match_results(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    args = type("Args", (), {"check": True})()
    assert results.readme(args) == 0, capsys.readouterr().err
    text = (REPO / "README.md").read_text()
    assert text.count("<!-- results ") == text.count("<!-- end results -->")
    assert len(text.splitlines()) <= 250


def write_run(folder, row: str, seed: int, top1: float, ece: float, pretrain_acc: float | None, init: str):
    folder.mkdir(parents=True)
    (folder / "metrics").mkdir()
    (folder / "metrics/evaluate.json").write_text(json.dumps({"top1": top1, "ece": ece, "top5": 0.9}))
    (folder / "metrics/finetune.json").write_text(json.dumps({"eval_acc": top1 - 0.01}))
    if pretrain_acc is not None:
        (folder / "metrics/pretrain.json").write_text(json.dumps({"train_acc": pretrain_acc}))
    (folder / "params.yaml").write_text(yaml.safe_dump({"seed": seed, "finetune": {"init": init}, "data": {}}))
    run = {
        "experiment": f"{row}-s{seed}",
        "row": row,
        "seed": seed,
        "command": "dvc exp run",
        "machine": {"cpu": "AMD EPYC"},
        "wall_seconds": {"pretrain": 100.0, "finetune": 50.0, "total": 170.0},
    }
    (folder / "run.yaml").write_text(yaml.safe_dump(run))


@pytest.fixture
def demo_group(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    group = tmp_path / "results" / "demo"
    scores = {0: (0.40, 0.36), 1: (0.42, 0.37), 2: (0.41, 0.39)}
    for seed, (synthetic, scratch) in scores.items():
        write_run(group / f"synthetic-s{seed}", "synthetic", seed, synthetic, 0.02, 0.5 + seed / 100, "pretrained")
        write_run(group / f"scratch-s{seed}", "scratch", seed, scratch, 0.05, None, "scratch")
    (group / "group.yaml").write_text(
        yaml.safe_dump({"title": "demo", "table": "arms", "arms": ["synthetic", "scratch"], "note": "Three seeds."})
    )
    return tmp_path


def test_an_arms_group_pairs_seeds_and_gives_the_difference(demo_group):
    table = results.group_table("demo")
    assert table["seed"].tolist() == [0, 1, 2, "mean", "sd"]
    assert table["difference"][:3].tolist() == pytest.approx([0.04, 0.05, 0.02])
    assert table["difference"][3] == pytest.approx(0.03667, abs=1e-4)
    assert table["difference"][4] == pytest.approx(0.01528, abs=1e-4)  # sample sd of 4, 5, 2 points
    assert table["pre-train acc"][:3].tolist() == pytest.approx([0.50, 0.51, 0.52])
    # make demo's time: the synthetic arm's 170 s, then the scratch arm's fine-tuning (50 s), not its
    # restored pre-training again.
    assert table["wall s"].tolist()[:4] == [220.0, 220.0, 220.0, 220.0]
    text = fit_width(table)
    assert "+3.67%" in text and max(map(len, text.splitlines())) <= 120


def test_regenerate_writes_the_group_between_its_markers(demo_group):
    document = "before\n<!-- results demo -->\nstale\n<!-- end results -->\nafter\n"
    fresh = results.regenerate(document)
    assert fresh.startswith("before\n<!-- results demo -->\n| seed") and fresh.endswith("<!-- end results -->\nafter\n")
    assert "stale" not in fresh and "Three seeds." in fresh and "| mean " in fresh
    assert results.regenerate(fresh) == fresh  # regenerating again changes nothing


def test_a_rows_group_gives_each_row_its_mean_and_sd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    group = tmp_path / "results" / "proof"
    for seed, top1 in enumerate((0.30, 0.34)):
        write_run(group / f"fractaldb-s{seed}", "fractaldb", seed, top1, 0.03, 0.6, "pretrained")
    (group / "group.yaml").write_text(yaml.safe_dump({"title": "proof", "table": "rows", "also": ["test_ece"]}))
    table = results.group_table("proof")
    assert table["row"].tolist() == ["fractaldb"] and table["seeds"].tolist() == [2]
    assert table["test_top1 mean"][0] == pytest.approx(0.32) and table["test_ece mean"][0] == pytest.approx(0.03)
