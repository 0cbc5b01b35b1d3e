"""results/: the published numbers. README.md and docs/ show exactly what results/ holds; group tables
compute what they say (the e2e demo test locks real experiments)."""

from __future__ import annotations

import json

import pytest
import yaml
from scipy import stats

from helpers.repo import REPO
from synthvit.commands import results
from synthvit.commands.reporting.tables import fit_width
from synthvit.errors import UserError


def test_readme_and_docs_match_results(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    args = type("Args", (), {"check": True})()
    assert results.readme(args) == 0, capsys.readouterr().err
    text = (REPO / "README.md").read_text()
    assert text.count("<!-- results ") == text.count("<!-- end results -->")
    assert len(text.splitlines()) <= 250


def write_run(folder, row: str, seed: int, top1: float, init: str, epochs: int = 4, labels: str = "categories"):
    folder.mkdir(parents=True)
    (folder / "metrics").mkdir()
    (folder / "metrics/evaluate.json").write_text(json.dumps({"top1": top1, "ece": 0.03, "top5": 0.9}))
    (folder / "metrics/finetune.json").write_text(json.dumps({"eval_acc": top1 - 0.01}))
    (folder / "metrics/pretrain.json").write_text(json.dumps({"train_acc": 0.6, "eval_acc": 0.55}))
    params = {
        "seed": 0,
        "synthetic": {"num_classes": 32, "instances_per_class": 128},
        "pretrain": {"epochs": epochs, "labels": labels},
        "finetune": {"init": init, "seed": seed},
        "data": {"val_fraction": 0},
    }
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    run = {
        "experiment": f"{row}-s{seed}",
        "row": row,
        "seed": seed,
        "command": "dvc exp run",
        "machine": {"cpu": "AMD EPYC"},
        "wall_seconds": {"pretrain": 100.0, "finetune": 50.0, "total": 150.0},
    }
    (folder / "run.yaml").write_text(yaml.safe_dump(run))


PRETRAINED = [0.40, 0.42, 0.41, 0.45, 0.43]
SCRATCH = [0.36, 0.37, 0.39, 0.40, 0.36]


@pytest.fixture
def study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    group = tmp_path / "results" / "study"
    for seed, (pretrained, scratch) in enumerate(zip(PRETRAINED, SCRATCH)):
        write_run(group / f"pretrained-e4-s{seed}", "pretrained-e4", seed, pretrained, "pretrained")
        write_run(group / f"pretrained-e16-s{seed}", "pretrained-e16", seed, pretrained + 0.01, "pretrained", 16)
        write_run(group / f"scratch-s{seed}", "scratch", seed, scratch, "scratch")
    write_run(group / "shuffled-s0", "shuffled", 0, 0.35, "pretrained", 16, "shuffled")
    spec = {
        "title": "study",
        "table": "rows",
        "also": ["pretrain_heldout_acc"],
        "paired": ["scratch"],
        "params": ["finetune.init", "pretrain.epochs"],
        "figure": "budget",
        "note": "Five seeds.",
    }
    (group / "group.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path


def test_a_paired_group_gives_each_row_its_difference_with_a_95_percent_interval(study):
    table = results.group_table("study").set_index("row")
    assert table.loc["pretrained-e4", "seeds"] == 5
    assert table.loc["pretrained-e4", "test_top1 mean"] == pytest.approx(sum(PRETRAINED) / 5)
    assert table.loc["pretrained-e4", "pretrain_heldout_acc mean"] == pytest.approx(0.55)
    differences = [p - s for p, s in zip(PRETRAINED, SCRATCH)]
    mean = sum(differences) / 5
    sd = (sum((d - mean) ** 2 for d in differences) / 4) ** 0.5
    half = stats.t.ppf(0.975, 4) * sd / 5**0.5  # t with n - 1 degrees of freedom
    expected = f"{100 * mean:+.2f} [{100 * (mean - half):+.2f}, {100 * (mean + half):+.2f}]"
    assert table.loc["pretrained-e4", "- scratch (95% CI)"] == expected == "+4.60 [+2.34, +6.86]"
    assert table.loc["scratch", "- scratch (95% CI)"] == ""  # the baseline itself
    assert table.loc["shuffled", "- scratch (95% CI)"] == "-1.00"  # one pair: no interval
    assert table.loc["pretrained-e16", "pretrain.epochs"] == 16
    assert table.loc["scratch", "pretrain.epochs"] == ""  # it never pre-trained: its pretrain.* params are not shown
    text = fit_width(results.group_table("study"))
    assert "+4.60 [+2.34, +6.86]" in text and max(map(len, text.splitlines())) <= 120


def test_the_budget_figure_draws_pretraining_against_image_steps_and_scratch_as_a_band(study):
    ax = results.budget_figure("study").axes[0]
    points = {container.get_label(): container.lines[0] for container in ax.containers}  # errorbar series
    curve = points["fractal pre-training"]
    assert list(curve.get_xdata()) == [4 * 32 * 128, 16 * 32 * 128] and ax.get_xscale() == "log"
    assert list(curve.get_ydata()) == pytest.approx([sum(PRETRAINED) / 5, sum(PRETRAINED) / 5 + 0.01])
    assert list(points["shuffled labels"].get_ydata()) == [0.35]
    (band,) = [line.get_label() for line in ax.get_lines() if line.get_label().startswith("scratch")]
    assert band == f"scratch {100 * sum(SCRATCH) / 5:.1f}%"


def test_regenerate_writes_the_group_between_its_markers(study):
    document = "before\n<!-- results study -->\nstale\n<!-- end results -->\nafter\n"
    fresh = results.regenerate(document)
    assert fresh.startswith("before\n<!-- results study -->\n| row") and fresh.endswith("<!-- end results -->\nafter\n")
    assert "stale" not in fresh and "Five seeds." in fresh and "| pretrained-e4 " in fresh
    assert results.regenerate(fresh) == fresh  # regenerating again changes nothing


def test_a_ledger_gives_each_claim_its_figure_ours_and_a_verdict_from_the_locked_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    group = tmp_path / "results" / "ledger"
    write_run(group / "mnist-p7-s0", "mnist-p7", 0, 0.85, "scratch")
    for seed, (conv, linear) in enumerate([(0.46, 0.44), (0.465, 0.44), (0.455, 0.44)]):
        write_run(group / f"cifar10-conv-s{seed}", "cifar10-conv", seed, conv, "scratch")
        write_run(group / f"cifar10-linear-s{seed}", "cifar10-linear", seed, linear, "scratch")
    claims = [
        {
            "claim": "88% on MNIST",
            "figure": "88%",
            "row": "mnist-p7",
            "absolute": 0.88,
            "recipe": "p7",
            "differs": "one seed",
        },
        {"claim": "44% on CIFAR-10", "figure": "44%", "row": "cifar10-linear", "absolute": 0.44, "recipe": "lin"},
        {
            "claim": "conv helps",
            "figure": "conv > linear",
            "better": ["cifar10-conv", "cifar10-linear"],
            "recipe": "conv",
        },
        {
            "claim": "linear helps",
            "figure": "linear > conv",
            "better": ["cifar10-linear", "cifar10-conv"],
            "recipe": "conv",
        },
        {"claim": "98.5% from ImageNet", "figure": "98.5%", "needs": "hub weights and a GPU", "recipe": "hub"},
    ]
    (group / "group.yaml").write_text(yaml.safe_dump({"claims": claims}))
    table = results.group_table("ledger").set_index("claim")
    assert table.loc["88% on MNIST", "ours"] == "85.00%"
    assert table.loc["88% on MNIST", "verdict"] == "not reproduced: 3.0 points below (one seed)"
    assert table.loc["44% on CIFAR-10", "ours"] == "44.00%" and table.loc["44% on CIFAR-10", "verdict"] == (
        "reproduced (+0.0 points)"
    )
    assert table.loc["conv helps", "ours"].startswith(
        "cifar10-conv 46.00% ± 0.50%, cifar10-linear 44.00%; difference +2.00 [+0.76, +3.24]"
    )
    assert table.loc["conv helps", "verdict"] == "reproduced"
    assert table.loc["linear helps", "verdict"] == "not reproduced: the other way"
    assert table.loc["98.5% from ImageNet", "verdict"] == "needs hub weights and a GPU"
    assert table.loc["98.5% from ImageNet", "command"] == "`dvc exp run $(synthvit recipe hub)`"
    (group / "group.yaml").write_text(
        yaml.safe_dump({"claims": [*claims, {"claim": "sincos", "compare": ["a", "b"], "recipe": "s", "differs": "x"}]})
    )
    assert results.group_table("ledger").set_index("claim").loc["sincos", "verdict"] == "not run yet (`make ledger`)"


def test_a_group_with_no_locked_runs_says_so_in_documents_and_a_ledger_still_lists_its_claims(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results/sweep").mkdir(parents=True)
    (tmp_path / "results/sweep/group.yaml").write_text("note: One epoch.\n")
    assert results.document_table("sweep") == "Not run yet: results/sweep holds no locked runs.\n\nOne epoch.\n"
    with pytest.raises(UserError, match="holds no locked runs"):
        results.group_table("sweep")  # `results show` on it: the one-line error
    (tmp_path / "results/ledger").mkdir()
    claims = [
        {"claim": "88% on MNIST", "figure": "88%", "row": "mnist-p7", "absolute": 0.88, "recipe": "p7"},
        {"claim": "98.5% from ImageNet", "figure": "98.5%", "needs": "a GPU", "recipe": "hub"},
    ]
    (tmp_path / "results/ledger/group.yaml").write_text(yaml.safe_dump({"claims": claims}))
    table = results.group_table("ledger").set_index("claim")
    assert list(table["verdict"]) == ["not run yet (`make ledger`)", "needs a GPU"] and set(table["ours"]) == {""}
