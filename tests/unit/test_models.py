import shutil

import pytest
import torch

from helpers.repo import REPO
from synthvit.config import ModelConfig
from synthvit.errors import UserError, rebuild_hint
from synthvit.models import (
    MIMETIC_VALUE_PROJ,
    check_same_architecture,
    create_model,
    load_checkpoint,
    mimetic_init,
    model_from_checkpoint,
    new_head,
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
    cnn = create_model(
        ModelConfig(name="resnet18", patch_size=None, embed_dim=None, depth=None, num_heads=None, drop_path_rate=0.0), 5
    )
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
    with pytest.raises(UserError, match=r"junk.pt is damaged or foreign \(truncated or not a PyTorch file\)"):
        load_checkpoint(junk)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a synthvit checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_damaged_checkpoint_names_the_file_and_the_rebuild(tmp_path, monkeypatch):
    """Truncated, or a foreign pickle: one line with the file and the stage to re-run (as the dvc.yaml of the
    repository holding the file declares it), never torch's weights_only advice."""
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    monkeypatch.chdir(tmp_path)
    models = tmp_path / "models"
    models.mkdir()
    good = models / "pretrain.pt"
    save_checkpoint(good, create_model(TINY, num_classes=3), TINY, ["a", "b", "c"])
    truncated = models / "finetune.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError) as caught:
        load_checkpoint(truncated)
    assert str(caught.value) == (
        f"checkpoint {truncated} is damaged or foreign (truncated or not a PyTorch file); "
        "rebuild it with `dvc repro -f finetune`"
    )
    torch.save(create_model(TINY, num_classes=3), good)  # a whole pickled module: code, not data
    with pytest.raises(UserError) as caught:
        load_checkpoint(good)
    message = str(caught.value)
    assert "\n" not in message and "weights_only" not in message
    assert message.endswith(
        "(it holds Python objects, not plain tensors: a foreign file, unsafe to unpickle); "
        "rebuild it with `dvc repro -f pretrain`"
    )


def test_rebuild_hint_names_the_repository_of_the_file(tmp_path, monkeypatch):
    """`synthvit predict` runs anywhere: the hint names the stage of the file's own repository and where that
    is; a file of no repository gets no `dvc repro` advice, whatever dvc.yaml the working directory has."""
    repo = tmp_path / "repo"
    (repo / "models").mkdir(parents=True)
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    elsewhere = tmp_path / "elsewhere" / "models"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(REPO)  # a dvc.yaml here must not advise on files of other folders
    assert rebuild_hint(repo / "models" / "finetune.pt") == f"rebuild it with `dvc repro -f finetune` in {repo}"
    assert rebuild_hint(repo / "metrics" / "evaluate.json").startswith("rebuild it with `dvc repro -f evaluate`")
    assert rebuild_hint(elsewhere / "finetune.pt") == "remove or replace the file"
    monkeypatch.chdir(repo)
    assert rebuild_hint("models/pretrain.pt") == "rebuild it with `dvc repro -f pretrain`"


def test_backbone_keeps_weights_and_replaces_head(tmp_path):
    pretrained = create_model(TINY, num_classes=100)
    save_checkpoint(tmp_path / "p.pt", pretrained, TINY, [str(i) for i in range(100)])
    checkpoint = load_checkpoint(tmp_path / "p.pt")
    model = model_from_checkpoint(checkpoint, drop_path_rate=TINY.drop_path_rate)
    new_head(model, 10, seed=0)
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


def test_conv_stem_replaces_the_patch_projection():
    conv = ModelConfig(**{**TINY.__dict__, "patch_embed": "conv"})
    model = create_model(conv, num_classes=5)
    convs = [m for m in model.patch_embed.modules() if isinstance(m, torch.nn.Conv2d)]
    # patch 8 = three stride-2 3x3 convs, then a 1x1 conv to the embedding width
    assert [c.kernel_size for c in convs] == [(3, 3)] * 3 + [(1, 1)]
    assert [c.stride for c in convs] == [(2, 2)] * 3 + [(1, 1)]
    assert convs[-1].out_channels == 32
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.patch_embed.modules())
    assert model.patch_embed.num_patches == 16  # same token grid as linear 8x8 patches
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


def test_sincos_position_embedding_is_fixed_and_two_dimensional():
    from timm.optim import create_optimizer_v2

    model = create_model(ModelConfig(**{**TINY.__dict__, "pos_embed": "sincos"}), num_classes=5)
    table = model.pos_embed.detach()[0]
    assert not model.pos_embed.requires_grad
    assert torch.equal(table[0], torch.zeros(32))  # class token position
    grid = table[1:].reshape(4, 4, 32)
    # Each channel encodes one axis: half of them are constant along rows, half along columns.
    same_along_row = (grid - grid[:, :1]).abs().amax(dim=(0, 1)) == 0
    same_along_column = (grid - grid[:1]).abs().amax(dim=(0, 1)) == 0
    assert same_along_row.sum() == 16 and same_along_column.sum() == 16
    assert not (same_along_row & same_along_column).any()
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-3)
    assert all(p is not model.pos_embed for group in optimizer.param_groups for p in group["params"])
    learned = create_model(TINY, num_classes=5)
    assert learned.pos_embed.requires_grad and not torch.allclose(learned.pos_embed, model.pos_embed)


def test_ablations_are_for_vits_only():
    cnn = {
        "name": "resnet18",
        "patch_size": None,
        "embed_dim": None,
        "depth": None,
        "num_heads": None,
        "drop_path_rate": 0.0,
    }
    with pytest.raises(UserError, match="pos_embed=sincos apply to timm ViTs"):
        create_model(ModelConfig(**cnn, pos_embed="sincos"), 5)
    with pytest.raises(UserError, match="patch_embed=conv, pos_embed=learned apply to timm ViTs"):
        # Unvalidated (params reject conv without a patch size): models.py's own check still answers.
        create_model(ModelConfig.model_construct(**cnn, patch_embed="conv"), 5)


def test_imagenet_weights_from_a_local_file_are_adapted_to_the_params(tmp_path):
    from safetensors.torch import save_file

    # A checkpoint in timm's hub layout for vit_tiny_patch16_224 (224 px, 16 px patches, 1000 classes).
    source = create_model(ModelConfig(img_size=224, patch_size=None, embed_dim=None, depth=None, num_heads=None), 1000)
    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    small = ModelConfig(img_size=32, patch_size=4, embed_dim=None, depth=None, num_heads=None)
    model = create_model(small, num_classes=10, imagenet_weights=str(weights))
    assert torch.equal(model.blocks[5].mlp.fc1.weight, source.blocks[5].mlp.fc1.weight)
    assert model.pos_embed.shape == (1, 1 + 8 * 8, 192)  # resampled from the 14 x 14 grid
    assert model.patch_embed.proj.weight.shape == (192, 3, 4, 4)  # resampled from 16 x 16
    assert model.head.out_features == 10
    with pytest.raises(UserError, match="set those to null"):
        create_model(
            ModelConfig(img_size=32, patch_size=4, embed_dim=96, depth=None, num_heads=None),
            10,
            imagenet_weights=str(weights),
        )
    with pytest.raises(UserError, match="no such file"):
        create_model(small, 10, imagenet_weights=str(tmp_path / "missing.safetensors"))


def test_imagenet_weights_offline_without_a_file_say_what_to_do(monkeypatch):
    import huggingface_hub.constants

    # No network here: fail at once. huggingface_hub reads the variable when imported, so set its constant too.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        UserError, match=r"hf download timm/vit_tiny_patch16_224\S* model.safetensors.*finetune.imagenet_weights"
    ):
        create_model(ModelConfig(embed_dim=None, depth=None, num_heads=None), 10, imagenet_weights="")


def test_new_head_depends_on_the_seed_alone():
    """Arms of one fine-tuning seed start from the same head, whatever their backbone and RNG history."""
    heads = []
    for draws_before in (0, 5):
        model = create_model(TINY, num_classes=100)
        torch.rand(draws_before)  # another arm's history of the global generator
        new_head(model, 10, seed=3)
        heads.append(model.head.state_dict())
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])
    other = create_model(TINY, 100)
    new_head(other, 10, seed=4)
    assert not torch.equal(other.head.weight, heads[0]["weight"])


DEMO = ModelConfig(img_size=32, patch_size=4, embed_dim=128, depth=2, num_heads=4, drop_path_rate=0.0)


def head_products(model):
    """Per block: the query-key product of each head (d x d) and the value-projection product (d x d),
    in the paper's notation (q = x W_q, out = (A v) W_proj)."""
    for block in model.blocks:
        attn, dim = block.attn, block.attn.qkv.in_features
        weight, k = attn.qkv.weight.detach(), attn.head_dim
        query_key = [
            weight[h * k : (h + 1) * k].T @ weight[dim + h * k : dim + (h + 1) * k] for h in range(attn.num_heads)
        ]
        yield query_key, weight[2 * dim :].T @ attn.proj.weight.detach().T


def test_mimetic_init_follows_the_paper():
    """Trockman & Kolter (arXiv 2305.09828): W_q W_k^T ~ identity per head, W_v W_proj ~ -identity."""
    model = create_model(DEMO, 10)
    mimetic_init(model, seed=0)
    alpha, beta = MIMETIC_VALUE_PROJ
    for query_key, value_proj in head_products(model):
        off_diagonal = value_proj - torch.diag(value_proj.diagonal())
        # the full-rank target alpha * Z + beta * I, Z ~ N(0, I/d), exactly
        assert value_proj.diagonal().mean() == pytest.approx(beta, abs=0.02)
        assert off_diagonal.std() == pytest.approx(alpha / 128**0.5, rel=0.1)
        for product in query_key:  # rank head_dim: the best approximation of 0.7 Z + 0.7 I
            assert torch.linalg.matrix_rank(product) == 32
            assert product.diagonal().mean() > 4 * (product - torch.diag(product.diagonal())).std()
    random = create_model(DEMO, 10)
    for query_key, value_proj in head_products(random):  # timm's init has no such structure
        assert abs(value_proj.diagonal().mean()) < 0.01 and all(abs(p.diagonal().mean()) < 0.01 for p in query_key)


def first_attention(model, images):
    """The first block's attention maps (batch, heads, tokens, tokens) on `images`."""
    maps = []

    def keep(attn, inputs, _):
        x = inputs[0]
        q, k, _ = attn.qkv(x).reshape(*x.shape[:2], 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        maps.append(((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1))

    handle = model.blocks[0].attn.register_forward_hook(keep)
    with torch.no_grad():
        model.eval()(images)
    handle.remove()
    return maps[0]


def test_mimetic_attention_looks_at_its_own_token_and_the_rest_is_untouched():
    torch.manual_seed(0)
    model, images = create_model(DEMO, 10), torch.randn(4, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    uniform = first_attention(model, images).diagonal(dim1=-2, dim2=-1).mean()
    mimetic_init(model, seed=0)
    diagonal = first_attention(model, images).diagonal(dim1=-2, dim2=-1).mean()
    assert uniform < 0.03 and diagonal > 10 * uniform  # 65 tokens: 1/65 each when attention is flat
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"blocks.{i}.attn.{w}.weight" for i in range(2) for w in ("qkv", "proj")}
    again = create_model(DEMO, 10)
    mimetic_init(again, seed=0)
    assert torch.equal(again.blocks[1].attn.qkv.weight, model.blocks[1].attn.qkv.weight)  # seeded


def test_mimetic_init_is_for_vits():
    cnn = create_model(
        ModelConfig(name="resnet18", patch_size=None, embed_dim=None, depth=None, num_heads=None, drop_path_rate=0.0), 5
    )
    with pytest.raises(UserError, match="init=mimetic applies to timm ViTs"):
        mimetic_init(cnn, seed=0)
