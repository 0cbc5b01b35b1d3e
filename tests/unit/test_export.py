"""`synthvit export`: a folder that timm alone loads with synthvit's weights, and a model card."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from helpers.repo import copy_subset
from helpers.training import tiny_finetuned_checkpoint
from synthvit.commands import cli
from synthvit.commands.export import export
from synthvit.config import ModelConfig
from synthvit.errors import UserError
from synthvit.evaluation.inference import predict_logits
from synthvit.models import (
    create_model,
    load_backbone,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)

TINY = ModelConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.0)
# Run with only timm and torch imported: what a user of the exported folder has.
TIMM_ONLY = """
import sys, torch, timm
model = timm.create_model("local-dir:" + sys.argv[1], pretrained=True).eval()
config = timm.data.resolve_data_config(model=model)
images = torch.load(sys.argv[2])
mean, std = (torch.tensor(config[key]).view(1, 3, 1, 1) for key in ("mean", "std"))
x = (images.float() / 255 - mean) / std
with torch.no_grad():
    torch.save({"logits": model(x), "config": config, "loaded": sorted(sys.modules)}, sys.argv[3])
"""


@pytest.fixture(scope="module")
def checkpoint(cifar10_root, tmp_path_factory):
    folder = copy_subset(cifar10_root, tmp_path_factory.mktemp("cifar") / "cifar", train_per_class=8, test_per_class=4)
    return folder, tiny_finetuned_checkpoint(folder / "train", tmp_path_factory.mktemp("model") / "finetune.pt", TINY)


def test_timm_alone_loads_the_same_model(checkpoint, tmp_path, capsys, monkeypatch):
    images_folder, source = checkpoint
    with pytest.raises(SystemExit) as code:
        cli.main(["export", str(source), str(tmp_path / "exported")])
    assert code.value.code == 0 and "local-dir:" in capsys.readouterr().out
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    torch.save(images, tmp_path / "images.pt")
    subprocess.run(
        [
            sys.executable,
            "-c",
            TIMM_ONLY,
            str(tmp_path / "exported"),
            str(tmp_path / "images.pt"),
            str(tmp_path / "out.pt"),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    out = torch.load(tmp_path / "out.pt", weights_only=False)
    assert not any(name.startswith("synthvit") for name in out["loaded"])
    saved = load_checkpoint(source)
    expected = predict_logits(
        model_from_checkpoint(saved), images, torch.device("cpu"), mean=saved["mean"], std=saved["std"]
    )
    assert torch.allclose(out["logits"], expected, atol=1e-5)
    assert out["config"]["input_size"] == (3, 32, 32) and tuple(out["config"]["mean"]) == (0.5, 0.5, 0.5)
    config = json.loads((tmp_path / "exported/config.json").read_text())
    assert config["label_names"] == saved["classes"] and "license" not in config["pretrained_cfg"]
    card = (tmp_path / "exported/README.md").read_text()
    assert "ViT of 2 blocks, width 32, 2 heads, linear 8-px patches" in card and "airplane" in card


def test_a_backbone_takes_a_new_head(checkpoint, tmp_path):
    _, source = checkpoint
    export(source, tmp_path / "backbone")
    import timm

    model = timm.create_model(f"local-dir:{tmp_path / 'backbone'}", pretrained=True, num_classes=3)
    assert model.head.out_features == 3
    trained = load_checkpoint(source)["model_state"]
    assert torch.equal(model.state_dict()["blocks.0.attn.qkv.weight"], trained["blocks.0.attn.qkv.weight"])


def test_an_exported_folder_is_a_backbone_synthvit_fine_tunes_from(checkpoint, tmp_path):
    """finetune.backbone may name an exported folder (a released backbone): the same weights, model and recipe."""
    _, source = checkpoint
    export(source, tmp_path / "released")
    saved, released = load_checkpoint(source), load_backbone(tmp_path / "released")
    assert released["model_config"] == saved["model_config"] and released["classes"] == saved["classes"]
    assert released["recipe"] == (saved.get("recipe") or {}) and released["summary"] == (saved.get("summary") or {})
    model = model_from_checkpoint(released, drop_path_rate=TINY.drop_path_rate)
    assert all(torch.equal(v, saved["model_state"][k]) for k, v in model.state_dict().items())
    (tmp_path / "released" / "model.safetensors").unlink()
    with pytest.raises(UserError, match="is not an exported backbone"):
        load_backbone(tmp_path / "released")


def test_refusals(checkpoint, tmp_path):
    _, source = checkpoint
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="full exists and is not empty: choose another folder, or --force"):
        export(source, tmp_path / "full")
    export(source, tmp_path / "full", force=True)
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"  # --force replaces export files only
    conv = ModelConfig(**{**TINY.model_dump(), "patch_embed": "conv"})
    save_checkpoint(tmp_path / "conv.pt", create_model(conv, 10), conv, [str(i) for i in range(10)])
    with pytest.raises(UserError, match="convolutional stem .* timm cannot rebuild"):
        export(tmp_path / "conv.pt", tmp_path / "conv")


def test_push_offline_is_one_line(checkpoint, tmp_path, capsys, monkeypatch):
    _, source = checkpoint
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as code:
        cli.main(["export", str(source), str(tmp_path / "out"), "--push", "someone/tiny-vit"])
    err = capsys.readouterr().err.strip()
    assert code.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: cannot push to the Hugging Face hub as someone/tiny-vit") and "export is in" in err
    assert (tmp_path / "out/model.safetensors").is_file()  # what was exported stays
