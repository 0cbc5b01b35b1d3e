"""recipes.yaml: every named recipe is a valid experiment, and `synthvit recipe` prints it as DVC reads it."""

from __future__ import annotations

import shlex

import pytest
from ruamel.yaml import YAML

from helpers.repo import REPO
from synthvit.commands import cli
from synthvit.config import (
    apply_overrides,
    committed_params,
    load_recipes,
    parse_params,
    read_yaml,
    recipe_overrides,
)
from synthvit.errors import UserError
from synthvit.models import create_model

RECIPES = load_recipes(REPO / "recipes.yaml")


def as_dvc_applies(arguments: str) -> dict:
    """`-S key=value ...` as `dvc exp run` parses it: each value as YAML 1.2 (1e-3 is a number)."""
    words = shlex.split(arguments)
    assert words[::2] == ["-S"] * (len(words) // 2), words
    pairs = [word.split("=", 1) for word in words[1::2]]
    return {key: YAML(typ="safe").load(value) for key, value in pairs}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_is_a_valid_experiment(name, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_code:
        cli.main(["recipe", name])
    assert exit_code.value.code == 0
    printed = as_dvc_applies(capsys.readouterr().out)
    assert printed == recipe_overrides(name, RECIPES, baseline=committed_params())  # cwd: REPO
    params = parse_params(apply_overrides(read_yaml(REPO / "params.yaml"), printed))
    model = create_model(params.model, num_classes=10)
    blocks = getattr(model, "blocks", None)
    if params.model.depth is not None and blocks is not None:
        assert len(blocks) == params.model.depth


def test_includes_come_first_and_a_later_key_wins():
    recipes = {"base": {"set": {"model.depth": 6, "seed": 1}}, "top": {"include": ["base"], "set": {"seed": 2}}}
    assert recipe_overrides("top", recipes) == {"model.depth": 6, "seed": 2}


def test_the_ledger_rows_measure_what_their_claims_say():
    def row(name):
        return parse_params(apply_overrides(read_yaml(REPO / "params.yaml"), recipe_overrides(name, RECIPES)))

    linear, conv = row("ledger-cifar10-vit-scratch"), row("ledger-cifar10-vit-scratch-conv")
    assert (linear.model.patch_embed, conv.model.patch_embed) == ("linear", "conv")
    assert linear.model_dump(exclude={"model"}) == conv.model_dump(exclude={"model"})  # the stem is the only difference
    mnist = row("ledger-mnist-vit-scratch-p7")
    assert (mnist.data.name, mnist.model.img_size, mnist.model.patch_size, mnist.finetune.hflip) == ("mnist", 28, 7, 0)
    for params in (linear, conv, mnist):
        assert params.finetune.init == "scratch" and params.pretrain.epochs == 1  # pre-training shrunk: unused


def test_every_ledger_command_names_a_recipe_that_exists():
    claims = read_yaml(REPO / "results/ledger/group.yaml")["claims"]
    for claim in claims:
        assert ("command" in claim) != ("recipe" in claim), claim["claim"]  # one way to run it, said once
        if "recipe" in claim:
            parse_params(apply_overrides(read_yaml(REPO / "params.yaml"), recipe_overrides(claim["recipe"], RECIPES)))


def test_unknown_recipe_names_the_known_ones(monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(UserError, match="no recipe 'nope' in recipes.yaml; recipes: demo, "):
        recipe_overrides("nope")


def test_a_recipe_gives_its_params_whatever_ran_before():
    """`make study` runs its rows one after another in one workspace, and `dvc exp run` starts from the
    params the last run left: a recipe also sets, at their committed values, the keys other recipes set."""
    base = read_yaml(REPO / "params.yaml")
    printed = {name: recipe_overrides(name, RECIPES, baseline=base) for name in RECIPES}
    for previous in RECIPES:
        after_previous = apply_overrides(base, printed[previous])
        for row in RECIPES:
            assert apply_overrides(after_previous, printed[row]) == apply_overrides(base, printed[row]), (previous, row)
    # Without the committed values, the demo run after a scratch probe would fine-tune from scratch.
    demo_after_probe = apply_overrides(
        apply_overrides(base, printed["probe-scratch"]), recipe_overrides("demo", RECIPES)
    )
    assert demo_after_probe["finetune"]["init"] == "scratch" and printed["demo"]["finetune.init"] == "pretrained"


def test_several_recipes_combine_in_order(capsys, monkeypatch):
    """`synthvit recipe study-finetune pretrain-colors`: the study's arms, one fine-tuning and a chosen pre-training."""
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit):
        cli.main(["recipe", "study-finetune", "pretrain-colors"])
    params = parse_params(apply_overrides(read_yaml(REPO / "params.yaml"), as_dvc_applies(capsys.readouterr().out)))
    assert params.pretrain.random_colors and params.synthetic.num_classes == 32  # the pre-training's keys
    assert params.data.train_per_class == 250 and params.finetune.epochs == 10  # and the fine-tuning's
    with pytest.raises(SystemExit):
        cli.main(["recipe", "study-probe", "study-finetune"])  # a later recipe wins its keys
    assert as_dvc_applies(capsys.readouterr().out)["data.val_fraction"] == 0
