"""`synthvit compare --arms`: its table and refusals, without a pipeline (pipeline/test_demo.py runs it for real)."""

import pandas as pd
import pytest

from synthvit.commands import cli
from synthvit.commands import compare as compare_arms
from synthvit.commands.reporting import figures
from synthvit.commands.reporting.tables import cell, fit_width, markdown_table
from synthvit.errors import UserError


def arm(label, name, init, top1, top5, ece, heldout, pretrain_s, finetune_s, cost_s):
    return {
        "arm": label,
        "experiment": name,
        "init": init,
        "test_top1": top1,
        "test_top5": top5,
        "test_ece": ece,
        "pretrain_heldout_acc": heldout,
        "wall_pretrain_s": pretrain_s,
        "wall_finetune_s": finetune_s,
        "cost_s": cost_s,
        "test_images": 10000,
    }


ROWS = [
    arm("A", "demo-1203-1015-pretrained", "pretrained", 0.484, 0.92, 0.02, 0.83, 572.0, 682.0, 1360.0),
    arm("B", "demo-1203-1015-scratch", "scratch", 0.45, 0.905, 0.036, None, None, 668.0, 741.0),
    arm("C", "demo-1203-1015-mimetic", "mimetic", 0.47, 0.91, 0.03, None, None, 670.0, 745.0),
]


def test_table_has_every_arm_and_the_first_minus_each_other():
    table = compare_arms.arms_table(ROWS)
    assert table["arm"].tolist() == ["A", "B", "C", "A - B", "A - C"]
    assert table["test_top1"][3] == pytest.approx(0.034) and table["test_top1"][4] == pytest.approx(0.014)
    assert pd.isna(table["pretrain_heldout_acc"][3]) and table["cost_s"][3] == pytest.approx(619.0)
    header, _, first, second, _, difference, _ = [
        [cell.strip() for cell in line.split("|")[1:-1]]
        for line in markdown_table(compare_arms.display(table), percent=True).splitlines()
    ]
    assert header[:6] == ["arm", "init", "test top-1", "top-5", "ECE", "pre-train acc"]
    assert first[:6] == ["A", "pretrained", "48.40%", "92.00%", "0.020", "83.00%"] and second[5] == ""
    assert difference[:3] == ["A - B", "", "3.40%"] and difference[-1] == "619"
    assert compare_arms.legend(table) == (
        "A = demo-1203-1015-pretrained   B = demo-1203-1015-scratch   C = demo-1203-1015-mimetic"
    )


def test_the_terminal_table_fits_120_columns():
    text = fit_width(compare_arms.display(compare_arms.arms_table(ROWS)))
    assert max(map(len, text.splitlines())) <= 120
    assert "48.40%" in text and "pre-train acc" in text


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--arms", "a", "a"], "--arms needs two or more different experiments, got a a"),
        (["--arms", "a"], "--arms needs two or more different experiments, got a"),
        (["--arms", "a", "b", "--source", "dvc"], "--arms names its experiments: leave out --source"),
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
        return {"finetune": {"eval_images": 50}}[stage]

    def history(self, stage):
        if stage == "finetune":
            return pd.DataFrame({"epoch": range(1, len(self.curve) + 1), "eval_acc": self.curve})
        epochs = range(1, len(self.pretrain_curve) + 1)
        return pd.DataFrame({"epoch": epochs, "train_acc": self.pretrain_curve, "eval_acc": self.pretrain_curve})


def test_the_figure_shows_the_pretraining_curves_every_arm_and_the_whole_test_scores():
    arms = [
        ("A", Recorded("x-pretrained", "pretrained", 0.41, [0.30, 0.38], [0.1, 0.3, 0.5])),
        ("B", Recorded("x-scratch", "scratch", 0.35, [0.20, 0.33])),
    ]
    table = pd.DataFrame({"test_top1": [0.41, 0.35], "test_images": [100, 100]})
    pretraining, finetuning = figures.arms_figure(arms, table).axes
    assert [line.get_label() for line in pretraining.get_lines()] == ["training", "held-out instances"]
    assert list(pretraining.get_lines()[1].get_ydata()) == [0.1, 0.3, 0.5]
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
    assert cell("test top-1", -0.0123, percent=True) == "-1.23%" and cell("A - B", 0.01, percent=True) == "+1.00%"
