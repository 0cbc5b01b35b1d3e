"""`synthvit compare --arms`: its table and refusals, without a pipeline (pipeline/test_demo.py runs it for real)."""

import pandas as pd
import pytest

from synthvit.commands import arms as compare_arms
from synthvit.commands import cli
from synthvit.commands.comparison import fit_width, markdown_table
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
