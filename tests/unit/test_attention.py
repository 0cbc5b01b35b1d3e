"""Attention maps recomputed from real timm ViTs, the rollout, and the visualize stage's figures."""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from PIL import Image

from synthvit.config import ModelConfig, parse_params
from synthvit.errors import ConfigError
from synthvit.evaluation import attention
from synthvit.evaluation.inference import predict_logits
from synthvit.models import DEFAULT_MEAN, DEFAULT_STD, create_model, save_checkpoint

REPO = Path(__file__).resolve().parents[2]
TINY = ModelConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.0)


def tiny_vit(seed=0, **overrides):
    torch.manual_seed(seed)
    return create_model(ModelConfig(**{**TINY.__dict__, **overrides}), num_classes=10).eval()


def random_images(n, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)


def test_hooked_weights_reproduce_the_fused_attention_output():
    """The weights read from timm's unfused path, through v and the projection, give exactly what the
    fused SDPA kernel gave in a plain forward pass; the model is left fused."""
    model = tiny_vit(depth=3, num_heads=4)
    assert all(block.attn.fused_attn for block in model.blocks)  # the path that hides the weights
    seen = []

    def capture(module, args, output):
        seen.append((module, args[0], output))

    handles = [block.attn.register_forward_hook(capture) for block in model.blocks]
    x = attention.to_float(random_images(2), DEFAULT_MEAN, DEFAULT_STD)
    with torch.no_grad():
        fused_logits = model(x)
    for handle in handles:
        handle.remove()
    logits, weights = attention.attention_weights(model, x)
    assert all(block.attn.fused_attn for block in model.blocks)
    torch.testing.assert_close(logits, fused_logits, atol=1e-5, rtol=1e-4)
    assert len(seen) == 3 and len(weights) == 3
    for (module, tokens_in, output), layer_weights in zip(seen, weights):
        batch, tokens, _ = tokens_in.shape
        v = module.qkv(tokens_in).reshape(batch, tokens, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4)[2]
        rebuilt = module.proj((layer_weights @ v).transpose(1, 2).reshape(batch, tokens, -1))
        torch.testing.assert_close(rebuilt, output, atol=1e-5, rtol=1e-4)
        assert layer_weights.shape == (2, 4, 17, 17)
        torch.testing.assert_close(layer_weights.sum(-1), torch.ones(2, 4, 17))


def test_compute_attention_shapes_and_same_logits_as_inference():
    model = tiny_vit()
    images = random_images(5)
    result = attention.compute_attention(model, images, DEFAULT_MEAN, DEFAULT_STD, batch_size=2)  # several batches
    assert result.layers.shape == (5, 2, 17, 17)  # 1 class token + 4 x 4 patches
    assert result.num_prefix_tokens == 1 and result.has_class_token and result.grid_size == (4, 4)
    assert result.layer_maps().shape == (5, 2, 4, 4)
    assert result.rollout_map().shape == (5, 4, 4)
    torch.testing.assert_close(result.layers.sum(-1), torch.ones(5, 2, 17))
    # The class token's row over the patches is what the layer map shows.
    torch.testing.assert_close(result.layer_maps()[3, 1].flatten(), result.layers[3, 1, 0, 1:])
    # Hooks only read: the logits are those of plain inference.
    torch.testing.assert_close(result.logits, predict_logits(model, images, torch.device("cpu")), atol=1e-5, rtol=1e-5)


def test_rollout_matches_the_matrix_product():
    generator = torch.Generator().manual_seed(0)
    layers = torch.rand(2, 3, 5, 5, generator=generator).softmax(-1)
    eye = torch.eye(5)
    expected = torch.stack(
        [
            (0.5 * layers[n, 2] + 0.5 * eye) @ (0.5 * layers[n, 1] + 0.5 * eye) @ (0.5 * layers[n, 0] + 0.5 * eye)
            for n in range(2)
        ]
    )
    torch.testing.assert_close(attention.rollout(layers), expected)
    torch.testing.assert_close(attention.rollout(layers).sum(-1), torch.ones(2, 5))
    # Attention that only looks at itself rolls out to the identity.
    torch.testing.assert_close(attention.rollout(eye.expand(1, 4, 5, 5)), eye.expand(1, 5, 5))


def test_vit_without_class_token_averages_over_queries():
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        class_token=False,
        global_pool="avg",
        num_classes=10,
    ).eval()
    result = attention.compute_attention(model, random_images(2), DEFAULT_MEAN, DEFAULT_STD)
    assert result.num_prefix_tokens == 0 and not result.has_class_token
    assert result.layers.shape == (2, 2, 16, 16)
    torch.testing.assert_close(result.layer_maps()[0, 0].flatten(), result.layers[0, 0].mean(0))


def test_non_vit_is_refused_with_a_reason():
    model = timm.create_model("resnet10t", num_classes=10)
    assert not attention.supports_attention(model)
    with pytest.raises(ValueError, match="not a timm Vision Transformer"):
        attention.compute_attention(model, random_images(1), DEFAULT_MEAN, DEFAULT_STD)


def test_overlay_and_figures(tmp_path):
    image = random_images(1)[0].permute(1, 2, 0).numpy()
    heat = np.zeros((4, 4))
    heat[0, 0] = 1.0
    blended = attention.overlay(image, heat, size=128)
    assert blended.shape == (128, 128, 3) and blended.dtype == np.uint8
    # The hot corner is red in the jet colours; the cold far corner is blue.
    assert blended[2, 2, 0] > blended[2, 2, 2] and blended[-3, -3, 2] > blended[-3, -3, 0]
    assert attention.enlarge(image, 224).shape == (224, 224, 3)

    model = tiny_vit()
    images = random_images(3)
    result = attention.compute_attention(model, images, DEFAULT_MEAN, DEFAULT_STD)
    pixels = images.permute(0, 2, 3, 1).numpy()
    layers = attention.attention_figure(pixels, result, ["a", "b", "c"])
    # Rows are images; columns the input, one map per layer, the rollout, each what `overlay` gives.
    panels = [ax.get_images()[0].get_array() for ax in layers.axes]
    assert len(panels) == 3 * (2 + 2)  # 3 images x (input + 2 layers + rollout)
    assert np.array_equal(panels[0], pixels[0])
    assert np.array_equal(panels[1], attention.overlay(pixels[0], result.layer_maps()[0, 0].numpy()))
    assert np.array_equal(panels[3], attention.overlay(pixels[0], result.rollout_map()[0].numpy()))
    assert [ax.get_title() for ax in layers.axes[:4]] == ["input", "layer 1", "layer 2", "rollout"]
    grid = attention.rollout_figure(pixels, result, ["a", "b", "c"])
    shown = [ax.get_images()[0].get_array() for ax in grid.axes if ax.get_images()]
    assert [ax.get_title() for ax in grid.axes if ax.get_images()] == ["a", "b", "c"]
    assert np.array_equal(shown[2], attention.overlay(pixels[2], result.rollout_map()[2].numpy()))


def load_visualize_stage():
    spec = importlib.util.spec_from_file_location("visualize_stage", REPO / "stages/visualize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_visualize_stage_attention_figures(small_imagefolder, tmp_path, monkeypatch, capsys):
    """The stage's attention step on real CIFAR-10 test images: one image per class first; non-ViTs skipped."""
    visualize = load_visualize_stage()
    monkeypatch.chdir(tmp_path)
    classes = sorted(p.name for p in (small_imagefolder / "test").iterdir())
    paths = sorted((small_imagefolder / "test").glob("*/*.jpg"))
    predictions = pd.DataFrame(
        {
            "index": range(len(paths)),
            "actual": [p.parent.name for p in paths],
            "predicted": "cat",
            "confidence": 0.5,
            "path": [str(p) for p in paths],
        }
    )
    chosen = visualize.spread_over_classes(predictions, 12)
    assert chosen["actual"].tolist()[:10] == classes and chosen["actual"].tolist()[10:] == classes[:2]

    save_checkpoint(Path("models/finetune.pt"), tiny_vit(), TINY, classes)
    params = parse_params(
        {"data": {"name": "imagefolder", "root": str(small_imagefolder)}, "visualize": {"num_attention": 4}}
    )
    figures = visualize.attention_figures(params, predictions)
    assert [f.name for f in figures] == ["attention_layers.png", "attention_rollout.png"]
    for figure in figures:
        with Image.open(figure) as image:  # what they show is tested above; here, that they were written
            assert image.format == "PNG" and image.width > 300

    cnn = ModelConfig(name="resnet10t", img_size=32, patch_size=None, embed_dim=None, depth=None, num_heads=None)
    save_checkpoint(Path("models/finetune.pt"), create_model(cnn, 10), cnn, classes)
    assert visualize.attention_figures(params, predictions) == []
    assert "attention maps skipped: ResNet is not a timm Vision Transformer" in capsys.readouterr().out

    off = parse_params({"visualize": {"num_attention": 0}})
    assert visualize.attention_figures(off, predictions) == []
    with pytest.raises(ConfigError, match="visualize.num_attention=-1 is invalid"):
        parse_params({"visualize": {"num_attention": -1}})


def test_visualize_draws_a_model_without_mistakes(small_imagefolder, tmp_path):
    visualize = load_visualize_stage()
    paths = sorted((small_imagefolder / "test").glob("*/*.jpg"))
    names = [p.parent.name for p in paths]
    predictions = pd.DataFrame(
        {
            "index": range(len(paths)),
            "actual": names,
            "predicted": names,
            "confidence": 0.9,
            "path": [str(p) for p in paths],
        }
    )
    params = parse_params({"data": {"name": "imagefolder", "root": str(small_imagefolder)}})
    written = visualize.misclassified_grid(params, predictions, tmp_path / "misclassified.png")
    with Image.open(written) as image:  # dvc.yaml declares it: the stage writes it whatever the model
        assert image.format == "PNG"
    figure = visualize.misclassified_figure(params, predictions)
    assert figure._suptitle.get_text() == "Most confident mistakes: none"
    assert [t.get_text() for ax in figure.axes for t in ax.texts] == [
        f"no mistakes: all {len(paths)} test images were classified right"
    ]
