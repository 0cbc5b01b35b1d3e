import pytest
import yaml

from helpers.repo import REPO
from synthvit.config import Params, load_params, parse_params
from synthvit.errors import ConfigError, UserError


def test_repo_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert params.model.img_size % params.model.patch_size == 0
    assert params.finetune.init == "pretrained"


def test_params_yaml_spells_out_every_default():
    """Defaults live in config.py only; the repository's params.yaml lists each key with the same value."""
    written = yaml.safe_load((REPO / "params.yaml").read_text())
    assert written == Params().model_dump()


def test_defaults_fill_missing_sections():
    params = parse_params({"seed": 3})
    assert params.seed == 3
    assert params.pretrain.lr == 5e-4
    assert params.data.name == "cifar10"


@pytest.mark.parametrize(
    "raw, key, fragment",
    [
        ({"data": {"name": "imagenet22k"}}, "data.name", "one of cifar10, cifar100, mnist, imagefolder"),
        ({"pretrain": {"lr": -0.1}}, "pretrain.lr", "> 0"),
        ({"finetune": {"lr": 0}}, "finetune.lr", "> 0"),
        ({"model": {"img_size": 32, "patch_size": 5}}, "model.patch_size", "must divide model.img_size=32"),
        ({"model": {"embed_dim": 100, "num_heads": 3}}, "model.num_heads", "must divide model.embed_dim=100"),
        ({"finetune": {"init": "imagenet21k"}}, "finetune.init", "pretrained, scratch, mimetic, imagenet"),
        ({"model": {"patch_embed": "conv", "img_size": 36, "patch_size": 6}}, "model.patch_size", "a power of 2"),
        ({"model": {"patch_embed": "hybrid"}}, "model.patch_embed", "one of linear, conv"),
        ({"data": {"name": "cifar10", "loader": "stream"}}, "data.loader", "memory for data.name=cifar10"),
        ({"model": {"pos_embed": "rope"}}, "model.pos_embed", "one of learned, sincos"),
        (
            {"model": {"patch_embed": "conv"}, "finetune": {"init": "imagenet"}},
            "model.patch_embed",
            "ImageNet weights have no",
        ),
        ({"synthetic": {"kind": "mandelbrot"}}, "synthetic.kind", "fractaldb, ofdb, onepfrac"),
        ({"pretrain": {"lrr": 0.1}}, "pretrain.lrr", "unknown key"),
        ({"pretrain": {"epochs": "ten"}}, "pretrain.epochs", "must be an integer"),
        ({"pretrain": {"crop_scale": [0.9, 0.2]}}, "pretrain.crop_scale", "min <= max"),
        ({"runtime": {"device": "tpu"}}, "runtime.device", "auto, cuda, cpu"),
        ({"finetune": {"batch_size": 7}}, "finetune.batch_size", "even"),
        ({"finetune": {"epochs": 2, "warmup_epochs": 2}}, "finetune.warmup_epochs", "[0, epochs=2)"),
        ({"seed": -1}, "seed", ">= 0"),
        ({"pretrain": 5}, "pretrain", "a mapping of keys to values"),
        ({"pretrain": {"ema_decay": 1.0}}, "pretrain.ema_decay", "a number in [0, 1) (weight EMA"),
        ({"model": {"depth": 0}}, "model.depth", "an integer >= 1, or null"),
        ({"runtime": {"compile": 1}}, "runtime.compile", "must be true or false"),
        ({"pretrain": {"lr": "1e-3"}}, "pretrain.lr", "write it with a dot, e.g. 1.0e-3"),
    ],
)
def test_invalid_values_name_key_value_and_allowed(raw, key, fragment):
    with pytest.raises(ConfigError) as info:
        parse_params(raw)
    assert info.value.key == key
    message = str(info.value)
    assert message.startswith(f"params.yaml: {key}=")
    assert fragment in message


def test_null_overrides_allowed_for_non_vit_models():
    params = parse_params(
        {"model": {"name": "resnet18", "patch_size": None, "embed_dim": None, "depth": None, "num_heads": None}}
    )
    assert params.model.patch_size is None


def test_load_params_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_params(bad)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"seed": 1, "model": {"depth": 2}}))
    assert load_params(good).model.depth == 2


def test_params_yaml_as_dvc_writes_it_after_an_override(tmp_path):
    """`dvc exp run -S pretrain.min_lr=1.0e-6` writes `min_lr: 1e-06` back (YAML 1.2): still a number."""
    path = tmp_path / "params.yaml"
    path.write_text("pretrain:\n  min_lr: 1e-06\n  lr: 5e-4\nfinetune:\n  lr: 1.0e-3\n")
    params = load_params(path)
    assert (params.pretrain.min_lr, params.pretrain.lr, params.finetune.lr) == (1e-06, 5e-4, 1e-3)
