"""`synthvit compare --arms`: its table and refusals, without a pipeline (pipeline/test_demo.py runs it for real)."""

import pandas as pd
import pytest

from synthvit.commands import arms as compare_arms
from synthvit.commands import cli
from synthvit.commands.comparison import cell, fit_width, markdown_table
from synthvit.errors import UserError

ROWS = [
    {
        "arm": "A",
        "experiment": "demo-1203-1015-synthetic",
        "init": "pretrained",
        "test_top1": 0.484,
        "test_top5": 0.92,
        "test_ece": 0.02,
        "pretrain_acc": 0.53,
        "pretrain_s": 572.0,
        "finetune_s": 682.0,
        "cost_s": 1360.0,
        "test_images": 10000,
    },
    {
        "arm": "B",
        "experiment": "demo-1203-1015-scratch",
        "init": "scratch",
        "test_top1": 0.45,
        "test_top5": 0.905,
        "test_ece": 0.036,
        "pretrain_acc": None,
        "pretrain_s": None,
        "finetune_s": 668.0,
        "cost_s": 741.0,
        "test_images": 10000,
    },
]


def test_table_has_both_arms_and_their_difference():
    table = compare_arms.arms_table(ROWS)
    assert table["arm"].tolist() == ["A", "B", "A - B"]
    assert table["test_top1"][2] == pytest.approx(0.034) and pd.isna(table["pretrain_acc"][2])
    assert table["cost_s"][2] == pytest.approx(619.0)
    header, _, first, second, difference = [
        [cell.strip() for cell in line.split("|")[1:-1]]
        for line in markdown_table(compare_arms.display(table), percent=True).splitlines()
    ]
    assert header[:5] == ["arm", "init", "test top-1", "top-5", "ECE"]
    assert first[:5] == ["A", "pretrained", "48.40%", "92.00%", "0.020"] and second[5] == ""  # no pre-training
    assert difference[2] == "3.40%" and difference[-1] == "619"
    assert compare_arms.legend(table) == "A = demo-1203-1015-synthetic   B = demo-1203-1015-scratch"


def test_the_terminal_table_fits_120_columns():
    text = fit_width(compare_arms.display(compare_arms.arms_table(ROWS)))
    assert max(map(len, text.splitlines())) <= 120
    assert "48.40%" in text and "pre-train acc" in text


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--arms", "a", "a"], "--arms needs two different experiments, got 'a' twice"),
        (["--arms", "a", "b", "--source", "dvc"], "--arms names its two experiments: leave out --source"),
    ],
)
def test_refusals(extra, message):
    args = cli.build_parser().parse_args(["compare", *extra])
    with pytest.raises(UserError, match=message):
        compare_arms.run(args)


class Recorded:
    """An experiment as `Experiment` reads it from DVC, given directly (the e2e demo test reads real ones)."""

    def __init__(self, name, init, test_top1, curve, pretrain_curve=()):
        self.name, self.init = name, init
        self.test_top1, self.curve, self.pretrain_curve = test_top1, curve, pretrain_curve

    def param(self, dotted, default=None):
        return {"finetune.init": self.init, "data.val_fraction": 0}.get(dotted, default)

    def metrics(self, stage):
        return {
            "evaluate": {"top1": self.test_top1, "top5": 0.9, "ece": 0.03, "num_images": 100},
            "finetune": {"eval_images": 50},
            "pretrain": {"train_acc": 0.6},
        }[stage]

    def history(self, stage):
        values = self.curve if stage == "finetune" else self.pretrain_curve
        column = "eval_acc" if stage == "finetune" else "train_acc"
        return pd.DataFrame({"epoch": range(1, len(values) + 1), column: values})

    def timing(self, stage):
        return {"wall_seconds": 10.0}


def test_the_figure_shows_the_pretraining_curve_both_curves_and_the_whole_test_scores():
    arms = [
        compare_arms.Arm("A", Recorded("x-synthetic", "pretrained", 0.41, [0.30, 0.38], [0.1, 0.3, 0.5])),
        compare_arms.Arm("B", Recorded("x-scratch", "scratch", 0.35, [0.20, 0.33])),
    ]
    table = compare_arms.arms_table([arm.row() for arm in arms])
    assert table["arm"].tolist() == ["A", "B", "A - B"] and table["experiment"].tolist()[:2] == [
        "x-synthetic",
        "x-scratch",
    ]
    assert table["pretrain_s"][0] == 10.0 and pd.isna(table["pretrain_s"][1])  # scratch needs no pre-training
    pretraining, finetuning = compare_arms.arms_figure(arms, table).axes
    assert [list(line.get_ydata()) for line in pretraining.get_lines()] == [[0.1, 0.3, 0.5]]
    curves = {line.get_label(): list(line.get_ydata()) for line in finetuning.get_lines()}
    assert curves == {"A: pretrained, test curve": [0.30, 0.38], "B: scratch, test curve": [0.20, 0.33]}
    stars = {points.get_label(): float(points.get_offsets()[0][1]) for points in finetuning.collections}
    assert stars == {"A: whole test split 41.00%": 0.41, "B: whole test split 35.00%": 0.35}
    assert "on 50 images" in finetuning.get_title() and "all 100 test images" in finetuning.get_title()


@pytest.mark.parametrize("text_dtype", [object, "str"])  # "str": pandas 3's default for text, as MLflow gives it
def test_markdown_puts_text_left_and_numbers_right(text_dtype):
    table = pd.DataFrame({"name": pd.Series(["seed-1", "seed-22"], dtype=text_dtype), "test_top1": [0.5, 0.25]})
    header, rule, first, _ = markdown_table(table).splitlines()
    assert header.startswith("| name ") and first.startswith("| seed-1 ")
    assert rule.split("|")[1:-1] == [":--------", "------------:"]  # name left, top-1 right
    assert first.endswith(" 0.5000 |")


def test_cells_are_formatted_by_what_they_hold():
    assert cell("wall_total_s mean", 228.313, percent=True) == "228"  # a mean whose sd was dropped: seconds
    assert cell("finetune_img_per_s", 41.34, percent=False) == "41.3"  # a rate, not seconds
    assert cell("test_top1 mean", 0.2751, percent=True) == "27.51%"
