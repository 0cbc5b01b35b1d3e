"""timm model factory and checkpoints.

A checkpoint is plain data (tensors, numbers, strings) so it loads with
`torch.load(weights_only=True)`: the model's state, the model params that rebuild it,
the class names and the input normalisation.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from pathlib import Path

import timm
import torch
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.file_download import _CACHED_NO_EXIST
from safetensors.torch import load_file
from timm.layers import HybridEmbed
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer_hybrid import ConvStem
from torch import nn

from synthvit.config import ModelConfig
from synthvit.errors import UserError, damaged_message, torch_load_reason
from synthvit.files import atomic_write, user_path

# Normalisation for models trained here: maps [0, 1] pixels to [-1, 1].
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)
CHECKPOINT_FORMAT = 1


# timm modules whose models are VisionTransformer (the class the patch/position ablations change).
VIT_MODULES = ["vision_transformer", "vision_transformer_hybrid", "deit"]


def conv_stem_embed(patch_size: int, embed_dim: int, in_chans: int = 3, **kwargs) -> nn.Module:
    """A convolutional stem in place of the patch projection (Xiao et al. 2021, "Early
    convolutions help transformers see better"): one 3x3 stride-2 conv with BN + ReLU per
    halving of the resolution, then a 1x1 conv to the embedding width. Built from timm's
    ConvStem and HybridEmbed; the token grid is the same as with linear patches.
    """
    halvings = int(math.log2(patch_size))
    channels = tuple(max(16, embed_dim >> (halvings - 1 - i)) for i in range(halvings)) + (embed_dim,)
    stem = ConvStem(
        in_chans=in_chans,
        depth=halvings + 1,
        channels=channels,
        kernel_size=(3,) * halvings + (1,),
        stride=(2,) * halvings + (1,),
    )
    return HybridEmbed(stem, patch_size=1, in_chans=in_chans, embed_dim=embed_dim, proj=False, **kwargs)


def fix_sincos_pos_embed(model: nn.Module) -> None:
    """Replace the learned position embedding by a fixed 2-D sin-cos one (zero for prefix tokens)."""
    grid = model.patch_embed.grid_size
    table = build_sincos2d_pos_embed(list(grid), dim=model.embed_dim).reshape(1, -1, model.embed_dim)
    prefix = model.pos_embed.shape[1] - table.shape[1]  # class token, unless no_embed_class
    table = torch.cat([table.new_zeros(1, prefix, model.embed_dim), table], dim=1)
    with torch.no_grad():
        model.pos_embed.copy_(table)
    model.pos_embed.requires_grad_(False)  # timm's optimizer factory skips frozen parameters


def create_model(cfg: ModelConfig, num_classes: int, imagenet_weights: str | None = None) -> nn.Module:
    """A timm model with the params' overrides (null params keep the model's default).

    imagenet_weights: None for random init; "" for timm's ImageNet weights from the Hugging
    Face hub; a path for the same weights from a local file (offline use). timm adapts the
    position embedding and patch projection to the params' img_size and patch_size.
    """
    if not timm.is_model(cfg.name):
        close = timm.list_models(f"*{cfg.name.split('_')[0]}*")[:8]
        raise UserError(
            f"params.yaml: model.name={cfg.name!r} is invalid: not a timm model"
            + (f"; similar names: {', '.join(close)}" if close else "; see timm.list_models()")
        )
    ablated = cfg.patch_embed != "linear" or cfg.pos_embed != "learned"
    if ablated and not timm.models.is_model_in_modules(cfg.name, VIT_MODULES):
        raise UserError(
            f"params.yaml: model.patch_embed={cfg.patch_embed}, pos_embed={cfg.pos_embed} apply to timm ViTs "
            f"(vit_*, deit_*), not {cfg.name!r}; set them to linear, learned"
        )
    keys = ("img_size", "patch_size", "embed_dim", "depth", "num_heads")
    kwargs = {k: getattr(cfg, k) for k in keys if getattr(cfg, k) is not None}
    # timm's registry says whether a model is built for one input size (ViTs: img_size sizes the position
    # embedding) or takes any (CNNs, which have no img_size argument; the data still uses it).
    pretrained_cfg = timm.models.get_pretrained_cfg(cfg.name)
    if pretrained_cfg is not None and not pretrained_cfg.fixed_input_size:
        kwargs.pop("img_size", None)
    if cfg.patch_embed == "conv":
        kwargs["embed_layer"] = conv_stem_embed
    pretrained = imagenet_weights is not None
    if imagenet_weights:
        kwargs["pretrained_cfg_overlay"] = {"file": str(imagenet_file(imagenet_weights).resolve())}
    try:
        model = timm.create_model(
            cfg.name, pretrained=pretrained, num_classes=num_classes, drop_path_rate=cfg.drop_path_rate, **kwargs
        )
    except TypeError as exc:
        raise UserError(
            f"params.yaml: model.name={cfg.name!r} does not take these overrides ({exc}); "
            "set the ones it does not use (patch_size, embed_dim, depth, num_heads) to null"
        ) from None
    except RuntimeError as exc:
        if not pretrained or "size mismatch" not in str(exc):
            raise
        raise UserError(
            f"the ImageNet weights of {cfg.name!r} do not fit model.embed_dim/depth/num_heads as set; "
            "set those to null to keep the pre-trained architecture (img_size and patch_size may differ)"
        ) from None
    except Exception as exc:
        if not pretrained or imagenet_weights:
            raise
        raise UserError(
            f"cannot download ImageNet weights for {cfg.name!r} from the Hugging Face hub ({type(exc).__name__}); "
            f"{offline_advice(cfg.name)} (HF_HUB_OFFLINE=1 skips the download retries)"
        ) from None
    if cfg.pos_embed == "sincos":
        fix_sincos_pos_embed(model)
    return model


def imagenet_file(imagenet_weights: str) -> Path:
    weights = user_path(imagenet_weights)
    if not weights.is_file():
        raise UserError(f"params.yaml: finetune.imagenet_weights={imagenet_weights!r} is invalid: no such file")
    return weights


def hub_id(name: str) -> str | None:
    """Where timm downloads the model's ImageNet weights from: a Hugging Face hub repository."""
    hub_cfg = timm.models.get_pretrained_cfg(name) if timm.is_model(name) else None
    return hub_cfg.hf_hub_id if hub_cfg else None


def offline_advice(name: str) -> str:
    fetch = f" (hf download {hub_id(name)} model.safetensors)" if hub_id(name) else ""
    return f"offline, fetch them on a connected machine{fetch} and set finetune.imagenet_weights to the file"


def check_weights_available(cfg: ModelConfig, imagenet_weights: str) -> None:
    """Fail in seconds when finetune.init=imagenet cannot get its weights (no file, hub out of reach)."""
    if imagenet_weights:
        imagenet_file(imagenet_weights)
        return
    repo = hub_id(cfg.name)
    if repo and try_to_load_from_cache(repo, "model.safetensors") not in (None, _CACHED_NO_EXIST):
        return  # downloaded before: timm loads it from the cache offline
    reason = unreachable("https://huggingface.co")
    if reason:
        raise UserError(
            f"cannot reach the Hugging Face hub for {cfg.name!r}'s ImageNet weights ({reason}); "
            f"{offline_advice(cfg.name)}"
        )


def unreachable(url: str, timeout: float = 5.0) -> str | None:
    """None when `url`'s server answers within `timeout` seconds, else why not (a few words)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # the server answered
    except (OSError, ValueError) as exc:
        return str(getattr(exc, "reason", None) or exc)[:120]


def save_checkpoint(path: Path, model: nn.Module, cfg: ModelConfig, classes: list[str], **extra) -> None:
    """Write atomically: a crash never leaves a truncated checkpoint behind."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "model_state": state,
        "model_config": cfg.model_dump(),
        "classes": list(classes),
        "mean": list(DEFAULT_MEAN),
        "std": list(DEFAULT_STD),
        **extra,
    }
    atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found: run the stage that writes it first (dvc repro)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - recording is best effort
        raise UserError(damaged_message(path, "checkpoint", torch_load_reason(exc))) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise UserError(damaged_message(path, "checkpoint", f"not a synthvit checkpoint of format {CHECKPOINT_FORMAT}"))
    return checkpoint


def model_from_checkpoint(checkpoint: dict, drop_path_rate: float | None = None) -> nn.Module:
    """Rebuild the model a checkpoint was saved from, with its weights (and its head, for the checkpoint's
    classes); `drop_path_rate` replaces the saved one, for a backbone fine-tuned with another."""
    overrides = {} if drop_path_rate is None else {"drop_path_rate": drop_path_rate}
    cfg = ModelConfig(**{**checkpoint["model_config"], **overrides})
    model = create_model(cfg, num_classes=len(checkpoint["classes"]))
    model.load_state_dict(checkpoint["model_state"])
    return model


def check_same_architecture(checkpoint: dict, cfg: ModelConfig, source: str) -> None:
    """A pre-trained backbone only fits the model it was trained as (drop-path aside)."""
    saved = checkpoint["model_config"]
    diff = {k: (saved.get(k), v) for k, v in cfg.model_dump(exclude={"drop_path_rate"}).items() if saved.get(k) != v}
    if diff:
        detail = ", ".join(f"model.{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
        raise UserError(
            f"{source} was trained with another model ({detail}); re-run pretrain (dvc repro) or match the params"
        )


def load_backbone(path: Path) -> dict:
    """A pre-trained backbone as a checkpoint dict: a synthvit checkpoint (models/pretrain.pt), or a folder
    that `synthvit export` wrote (config.json + model.safetensors: a released backbone, which needs no
    pipeline stage to have run)."""
    path = Path(path)
    if not path.is_dir():
        return load_checkpoint(path)
    config_file, weights = path / "config.json", path / "model.safetensors"
    if not (config_file.is_file() and weights.is_file()):
        raise UserError(f"{path} is not an exported backbone (no config.json and model.safetensors): `synthvit export`")
    try:
        config = json.loads(config_file.read_text())
        # What `synthvit export` keeps for synthvit: the stage, model_config, recipe and summary.
        return {**config["synthvit"], "classes": config["label_names"], "model_state": load_file(weights)}
    except (ValueError, KeyError, OSError) as exc:
        raise UserError(damaged_message(path, "exported backbone", type(exc).__name__)) from None


def new_head(model: nn.Module, num_classes: int, seed: int) -> None:
    """A fresh classifier for num_classes, drawn from `seed` alone: arms that share a fine-tuning seed
    (pre-trained, scratch, mimetic) start from the same head, whatever the rest of their weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.reset_classifier(num_classes)


# Mimetic initialisation (Trockman & Kolter, ICML 2023, arXiv 2305.09828): trained ViTs' attention
# has W_q W_k^T close to +identity in each head and W_v W_proj close to -identity; setting them so at
# init, from closed-form targets, gives a plain ViT most of a pre-training's head start on CIFAR-10.
# (alpha, beta) of the targets alpha * Z + beta * I, Z ~ N(0, I/d): the paper's values for small ViTs.
MIMETIC_QUERY_KEY = (0.7, 0.7)
MIMETIC_VALUE_PROJ = (0.4, -0.4)


def _factors(dim: int, rank: int, alpha: float, beta: float, generator: torch.Generator):
    """(A, B), both dim x rank, with A @ B.T the best rank-`rank` approximation (its SVD) of the target
    alpha * Z + beta * I, Z ~ N(0, I/dim) drawn from `generator`."""
    target = alpha * torch.randn(dim, dim, generator=generator) / math.sqrt(dim) + beta * torch.eye(dim)
    u, s, vh = torch.linalg.svd(target)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, vh[:rank].T * root


def mimetic_init(model: nn.Module, seed: int) -> None:
    """Set every attention block's query, key, value and projection weights as mimetic initialisation
    says: per head, W_q W_k^T = the best rank-head_dim approximation of 0.7 Z + 0.7 I; per block,
    W_v W_proj = 0.4 Z - 0.4 I exactly (Z drawn from `seed`). Biases and the rest stay as they are."""
    blocks = getattr(model, "blocks", [])
    if not blocks or not all(hasattr(b, "attn") and hasattr(b.attn, "qkv") for b in blocks):
        raise UserError(f"init=mimetic applies to timm ViTs (vit_*, deit_*), not {type(model).__name__}; use scratch")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in blocks:
            attn = block.attn
            dim, head_dim = attn.qkv.in_features, attn.head_dim
            weight = attn.qkv.weight  # rows: queries, keys, values; q = x @ weight[:dim].T
            for head in range(attn.num_heads):
                rows = slice(head * head_dim, (head + 1) * head_dim)
                query, key = _factors(dim, head_dim, *MIMETIC_QUERY_KEY, generator)
                weight[rows] = query.T
                weight[dim:][rows] = key.T
            value, proj = _factors(dim, dim, *MIMETIC_VALUE_PROJ, generator)
            weight[2 * dim :] = value.T
            attn.proj.weight.copy_(proj)  # out = a @ proj.weight.T, so W_proj = proj.T and W_v W_proj = value @ proj.T
