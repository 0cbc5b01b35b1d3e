import pytest
import torch

from synthvit.config import ModelConfig
from synthvit.errors import UserError
from synthvit.models import (
    backbone_with_new_head,
    check_same_architecture,
    create_model,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)

TINY = ModelConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.0)


def test_factory_applies_overrides():
    model = create_model(TINY, num_classes=7)
    assert model.patch_embed.proj.kernel_size == (8, 8)
    assert model.patch_embed.num_patches == 16
    assert len(model.blocks) == 2
    assert model.embed_dim == 32
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


def test_factory_errors():
    with pytest.raises(UserError, match="not a timm model"):
        create_model(ModelConfig(name="vit_gigantic_made_up"), 10)
    with pytest.raises(UserError, match="set the ones it does not use"):
        create_model(ModelConfig(name="resnet18"), 10)  # ViT overrides on a CNN
    cnn = create_model(ModelConfig(name="resnet18", patch_size=None, embed_dim=None, depth=None, num_heads=None, drop_path_rate=0.0), 5)
    assert cnn.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 5)


def test_checkpoint_round_trip(tmp_path):
    model = create_model(TINY, num_classes=3)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, TINY, ["a", "b", "c"], stage="test")
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp file left behind
    checkpoint = load_checkpoint(path)
    assert checkpoint["classes"] == ["a", "b", "c"] and checkpoint["stage"] == "test"
    rebuilt = model_from_checkpoint(checkpoint).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model.eval()(x), rebuilt(x))


def test_load_checkpoint_rejects_other_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "nothing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="cannot load checkpoint"):
        load_checkpoint(junk)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a synthvit checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_backbone_keeps_weights_and_replaces_head(tmp_path):
    pretrained = create_model(TINY, num_classes=100)
    save_checkpoint(tmp_path / "p.pt", pretrained, TINY, [str(i) for i in range(100)])
    checkpoint = load_checkpoint(tmp_path / "p.pt")
    model = backbone_with_new_head(checkpoint, TINY, num_classes=10)
    assert model.head.out_features == 10
    for name, tensor in model.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(tensor, pretrained.state_dict()[name]), name


def test_architecture_mismatch_is_explained(tmp_path):
    save_checkpoint(tmp_path / "p.pt", create_model(TINY, 4), TINY, list("abcd"))
    checkpoint = load_checkpoint(tmp_path / "p.pt")
    check_same_architecture(checkpoint, TINY, "p.pt")  # same: fine
    deeper = ModelConfig(**{**TINY.__dict__, "depth": 3})
    with pytest.raises(UserError, match=r"model.depth: 2 there, 3 now"):
        check_same_architecture(checkpoint, deeper, "p.pt")
