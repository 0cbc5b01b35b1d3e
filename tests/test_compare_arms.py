"""`synthvit compare --arms`: its table and refusals, without a pipeline (tests/test_demo.py runs it for real)."""

import pandas as pd
import pytest

from synthvit import cli, compare_arms
from synthvit.errors import UserError


def test_table_has_both_arms_and_their_difference():
    rows = [{"arm": "a", "finetune.init": "pretrained", "test_top1": 0.484, "test_top5": 0.92, "test_ece": 0.02,
             "pretrain_train_acc": 0.53, "wall_pretrain_s": 572.0, "wall_finetune_s": 682.0, "wall_total_s": 1360.0},
            {"arm": "b", "finetune.init": "scratch", "test_top1": 0.45, "test_top5": 0.905, "test_ece": 0.036,
             "pretrain_train_acc": None, "wall_pretrain_s": None, "wall_finetune_s": 668.0, "wall_total_s": 741.0}]
    table = compare_arms.arms_table(rows)
    assert table["arm"].tolist() == ["a", "b", "difference (a - b)"]
    assert table["test_top1"][2] == pytest.approx(0.034) and pd.isna(table["pretrain_train_acc"][2])
    header, _, first, second, difference = [[cell.strip() for cell in line.split("|")[1:-1]]
                                             for line in compare_arms.markdown(table).splitlines()]
    assert header[2:5] == ["test top-1", "top-5", "ECE"]
    assert first[:3] == ["a", "pretrained", "0.4840"] and second[5] == ""  # scratch: no pre-training accuracy
    assert difference[2] == "+0.0340" and difference[-1] == "+619.0" and difference[-2] == "+14.0"


@pytest.mark.parametrize("extra, message", [
    (["--arms", "a", "a"], "--arms needs two different experiments, got 'a' twice"),
    (["--arms", "a", "b", "--source", "dvc"], "--arms names its two experiments and reads MLflow"),
])
def test_refusals(extra, message):
    args = cli.build_parser().parse_args(["compare", *extra])
    with pytest.raises(UserError, match=message):
        compare_arms.run(args)
