"""Attention maps and attention rollout for timm Vision Transformers.

timm's `Attention` runs fused scaled-dot-product attention, which never materialises
the attention weights. For the extraction we switch each module to timm's own unfused
path (`fused_attn = False`), which computes softmax(q k^T * scale) and passes it through
`attn_drop`; a forward hook there reads the weights (timm's AttentionExtract hooks the
same module, but drops the logits of the pass, which the figures' captions need).

Per layer we keep the mean over heads. The map shown for a layer is the attention
from the class token to the patch tokens (the mean over all query tokens for models
without a class token). Rollout (Abnar & Zuidema, 2020) multiplies the per-layer
head-mean attention, each mixed half-and-half with the identity for the residual path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from timm.layers import Attention
from torch import nn

from synthvit.data.augment import to_float
from synthvit.evaluation import plots
from synthvit.evaluation.plots import plt


@dataclass
class AttentionResult:
    """Attention of a batch: per layer, mean over heads, and the rollout."""

    layers: torch.Tensor  # N x L x T x T, mean over heads, rows sum to 1
    rollout: torch.Tensor  # N x T x T
    num_prefix_tokens: int  # class (and register) tokens before the patch tokens
    grid_size: tuple[int, int]  # patch rows, columns
    has_class_token: bool
    logits: torch.Tensor  # N x classes, from the same forward pass

    def layer_maps(self) -> torch.Tensor:
        """N x L x rows x cols: what each layer's queries attend to, over the patch grid."""
        return self._to_grid(self.layers)

    def rollout_map(self) -> torch.Tensor:
        """N x rows x cols: attention rolled out through all layers, over the patch grid."""
        return self._to_grid(self.rollout.unsqueeze(1))[:, 0]

    def _to_grid(self, attention: torch.Tensor) -> torch.Tensor:
        prefix = self.num_prefix_tokens
        if self.has_class_token:
            rows = attention[..., 0, prefix:]  # the class token's attention to the patches
        else:
            rows = attention[..., prefix:, prefix:].mean(-2)
        return rows.reshape(*rows.shape[:-1], *self.grid_size)


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention modules of a timm ViT, first block first; [] when it is not one."""
    if getattr(getattr(model, "patch_embed", None), "grid_size", None) is None:
        return []
    modules = [getattr(block, "attn", None) for block in getattr(model, "blocks", [])]
    # Subclasses of Attention may compute differently.
    return modules if modules and all(type(m) is Attention for m in modules) else []


def supports_attention(model: nn.Module) -> bool:
    return bool(attention_modules(model))


def why_unsupported(model: nn.Module) -> str:
    return (
        f"{type(model).__name__} is not a timm Vision Transformer with standard self-attention blocks; "
        "attention maps need a ViT (e.g. vit_tiny_patch16_224)"
    )


def rollout(layers: torch.Tensor, residual: float = 0.5) -> torch.Tensor:
    """N x T x T rollout of N x L x T x T head-mean attention (rows sum to 1).

    Each layer is mixed with the identity for the residual connection,
    A' = (1 - residual) A + residual I, and the layers multiply in order:
    R = A'_L ... A'_2 A'_1.
    """
    n, num_layers, tokens, _ = layers.shape
    eye = torch.eye(tokens, dtype=layers.dtype, device=layers.device).expand(n, tokens, tokens)
    result = eye.clone()
    for layer in range(num_layers):
        mixed = (1 - residual) * layers[:, layer] + residual * eye
        mixed = mixed / mixed.sum(-1, keepdim=True)
        result = mixed @ result
    return result


@torch.no_grad()
def attention_weights(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits, per block B x heads x T x T softmax weights) of one forward pass of a timm ViT."""
    modules = attention_modules(model)
    captured: list[torch.Tensor] = []
    fused = [m.fused_attn for m in modules]
    handles = [m.attn_drop.register_forward_hook(lambda _m, _args, out: captured.append(out)) for m in modules]
    try:
        for m in modules:
            m.fused_attn = False  # the path that materialises the weights; the same maths as the fused kernel
        logits = model(x)
    finally:
        for m, was_fused, handle in zip(modules, fused, handles):
            m.fused_attn = was_fused
            handle.remove()
    return logits, captured


@torch.no_grad()
def compute_attention(
    model: nn.Module, images: torch.Tensor, mean, std, device: torch.device | str = "cpu", batch_size: int = 64
) -> AttentionResult:
    """Attention for uint8 N x 3 x S x S images (normalised with the checkpoint's mean and std)."""
    modules = attention_modules(model)
    if not modules:
        raise ValueError(why_unsupported(model))
    model.eval().to(device)
    layers, logits = [], []
    for start in range(0, len(images), batch_size):
        x = to_float(images[start : start + batch_size].to(device), mean, std)
        batch_logits, weights = attention_weights(model, x)
        logits.append(batch_logits.float().cpu())
        layers.append(torch.stack([w.float().mean(1).cpu() for w in weights], dim=1))
    layers = torch.cat(layers)
    num_prefix = int(getattr(model, "num_prefix_tokens", 1 if getattr(model, "cls_token", None) is not None else 0))
    return AttentionResult(
        layers=layers,
        rollout=rollout(layers),
        num_prefix_tokens=num_prefix,
        grid_size=tuple(int(s) for s in model.patch_embed.grid_size),
        has_class_token=getattr(model, "cls_token", None) is not None,
        logits=torch.cat(logits),
    )


# ---- overlays and figures ----------------------------------------------------------


def enlarge(image: np.ndarray, size: int | None) -> np.ndarray:
    """The image scaled up by a whole factor to about `size` pixels (nearest neighbour: pixels stay honest)."""
    if not size or size <= image.shape[0]:
        return image
    scale = max(1, round(size / image.shape[0]))
    return image.repeat(scale, 0).repeat(scale, 1)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, size: int | None = None) -> np.ndarray:
    """An HxWx3 uint8 image with a heat map (any grid, scaled to [0, 1]) blended over it in the jet colours.

    `size` first enlarges the image (nearest neighbour, so pixels stay honest) for display.
    """
    image = enlarge(np.asarray(image, dtype=np.uint8), size)
    height, width = image.shape[:2]
    heat = np.asarray(heat, dtype=np.float32)
    low, high = heat.min(), heat.max()
    heat = torch.from_numpy((heat - low) / (high - low) if high > low else np.zeros_like(heat))[None, None]
    heat = F.interpolate(heat, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()
    colours = colormaps["jet"](heat)[..., :3]
    blended = (1 - alpha) * image.astype(np.float32) / 255.0 + alpha * colours
    return (blended.clip(0, 1) * 255).round().astype(np.uint8)


def attention_figure(images: np.ndarray, result: AttentionResult, captions: list[str]):
    """Rows are images; columns the input, each layer's head-mean map, and the rollout, overlaid."""
    layer_maps = result.layer_maps().numpy()
    rollout_maps = result.rollout_map().numpy()
    rows, num_layers = len(images), layer_maps.shape[1]
    columns = num_layers + 2
    fig, axes = plt.subplots(
        rows, columns, figsize=(1.3 * columns + 1.2, 1.35 * rows + 0.5), squeeze=False, layout="constrained"
    )
    for r in range(rows):
        panels = [images[r]] + [overlay(images[r], layer_maps[r, layer]) for layer in range(num_layers)]
        panels.append(overlay(images[r], rollout_maps[r]))
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("input" if c == 0 else ("rollout" if c == columns - 1 else f"layer {c}"), fontsize=8)
        axes[r, 0].set_ylabel(captions[r], fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle("Attention to the patches per layer (mean over heads), and rollout", fontsize=10)
    return fig


def rollout_figure(images: np.ndarray, result: AttentionResult, captions: list[str], columns: int = 8):
    """A grid of rollout overlays, one per image, captioned (e.g. true -> predicted)."""
    maps = result.rollout_map().numpy()
    overlays = np.stack([overlay(image, heat) for image, heat in zip(images, maps)])
    return plots.image_grid(overlays, captions, "Attention rollout", columns=columns)
