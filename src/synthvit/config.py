"""Typed, validated view of params.yaml.

Every section is a dataclass. `load_params` reads the YAML, rejects unknown keys and
wrong types, and runs each section's `validate()`, so a stage fails on its first line
with a message that names the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from synthvit.errors import ConfigError, UserError

SYNTHETIC_KINDS = ("fractaldb", "ofdb", "onepfrac")
DATASETS = ("cifar10", "cifar100", "mnist", "imagefolder")
DEVICES = ("auto", "cuda", "cpu")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
OPTIMIZERS = ("adamw", "sgd")
LOADERS = ("memory", "stream")
AUTO_AUGMENTS = ("none", "randaugment", "trivialaugment")
FINETUNE_INITS = ("pretrained", "scratch", "imagenet")
PATCH_EMBEDS = ("linear", "conv")
POS_EMBEDS = ("learned", "sincos")


def _check(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)


def _check_range(key: str, value, allowed: str, low=None, high=None) -> None:
    ok = (low is None or value >= low) and (high is None or value <= high)
    _check(ok, key, value, allowed)


def _check_pair(key: str, value, low: float, high: float) -> None:
    ok = len(value) == 2 and low <= value[0] <= value[1] <= high
    _check(ok, key, value, f"a pair [min, max] with {low} <= min <= max <= {high}")


@dataclass
class RuntimeConfig:
    device: str = "auto"  # auto picks CUDA when present
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    num_threads: int = 0  # torch CPU threads; 0 keeps torch's default
    deterministic: bool = False  # deterministic kernels (bit-reproducible runs, slower on GPU)
    compile: bool = False  # torch.compile the model for training
    launcher: str = "python"  # the command dvc.yaml runs training stages with, e.g. "torchrun --nproc-per-node 4"

    def validate(self, prefix: str) -> None:
        _check(self.device in DEVICES, f"{prefix}.device", self.device, f"one of {', '.join(DEVICES)}")
        _check(self.precision in PRECISIONS, f"{prefix}.precision", self.precision, f"one of {', '.join(PRECISIONS)}")
        _check_range(f"{prefix}.num_threads", self.num_threads, "an integer >= 0", low=0)
        first = self.launcher.split()[0] if self.launcher.split() else ""
        _check(first in ("python", "python3", "torchrun") or first.endswith(("/python", "/python3", "/torchrun")),
               f"{prefix}.launcher", self.launcher, "python, or torchrun with its options (e.g. torchrun --nproc-per-node 4)")


@dataclass
class SyntheticConfig:
    kind: str = "fractaldb"
    num_classes: int = 1000
    instances_per_class: int = 10  # fractaldb only; ofdb and onepfrac draw one image per class
    image_size: int = 64
    num_points: int = 20000  # chaos-game points per image
    fill_rate: float = 0.2  # minimum fraction of pixels covered for a category to be kept
    min_maps: int = 2
    max_maps: int = 7
    sigma: float = 3.5  # onepfrac: sigma-factor of the single IFS
    onepfrac_maps: int = 2  # onepfrac: affine maps in the single IFS (1p-frac uses 2)
    delta: float = 0.1  # onepfrac: each coefficient times U(1-delta, 1+delta)
    max_attempts: int = 1000  # IFS draws allowed per category before giving up
    patch: str = "random"  # 3x3 point patches: random masks (FractalDB) | full (solid; smoother at low resolution)

    def validate(self, prefix: str) -> None:
        _check(self.kind in SYNTHETIC_KINDS, f"{prefix}.kind", self.kind, f"one of {', '.join(SYNTHETIC_KINDS)}")
        _check_range(f"{prefix}.num_classes", self.num_classes, "an integer >= 2", low=2)
        _check_range(f"{prefix}.instances_per_class", self.instances_per_class, "an integer >= 1", low=1)
        _check_range(f"{prefix}.image_size", self.image_size, "an integer in [8, 4096]", 8, 4096)
        _check_range(f"{prefix}.num_points", self.num_points, "an integer >= 100", low=100)
        _check_range(f"{prefix}.fill_rate", self.fill_rate, "a fraction in [0, 1)", 0.0, 0.999999)
        _check_range(f"{prefix}.min_maps", self.min_maps, "an integer >= 1", low=1)
        _check_range(f"{prefix}.max_maps", self.max_maps, f"an integer >= min_maps ({self.min_maps})", low=self.min_maps)
        _check_range(f"{prefix}.sigma", self.sigma, "a number > 0", low=1e-9)
        _check_range(f"{prefix}.onepfrac_maps", self.onepfrac_maps, "an integer >= 1", low=1)
        if self.kind == "onepfrac":  # each map's singular values add s1 + 2*s2 <= 3 to sigma
            _check_range(f"{prefix}.sigma", self.sigma,
                         f"a number in (0, {3 * self.onepfrac_maps}]: at most 3 per map (onepfrac_maps={self.onepfrac_maps})",
                         high=3 * self.onepfrac_maps)
        _check_range(f"{prefix}.delta", self.delta, "a fraction in [0, 1)", 0.0, 0.999999)
        _check_range(f"{prefix}.max_attempts", self.max_attempts, "an integer >= 1", low=1)
        _check(self.patch in ("random", "full"), f"{prefix}.patch", self.patch, "one of random, full")


@dataclass
class DataConfig:
    name: str = "cifar10"
    root: str = "data/cifar10"
    download: bool = True  # cifar10 only: fetch through torchvision when root holds no copy
    train_per_class: int = 0  # keep at most this many training images per class; 0 keeps all
    test_per_class: int = 0
    num_workers: int = 2  # image decoding threads
    val_fraction: float = 0.0  # hold out this fraction of train (seeded, per class) to pick the best epoch
    ignore_class_case: bool = False  # imagefolder: match train/ and test/ class folders case-insensitively
    loader: str = "memory"  # memory (decode once) | stream (imagefolder train split, decoded per batch by workers)

    def validate(self, prefix: str) -> None:
        _check(self.name in DATASETS, f"{prefix}.name", self.name, f"one of {', '.join(DATASETS)}")
        _check(bool(self.root), f"{prefix}.root", self.root, "a folder path")
        _check_range(f"{prefix}.train_per_class", self.train_per_class, "an integer >= 0 (0 keeps all)", low=0)
        _check_range(f"{prefix}.test_per_class", self.test_per_class, "an integer >= 0 (0 keeps all)", low=0)
        _check_range(f"{prefix}.num_workers", self.num_workers, "an integer >= 0", low=0)
        _check(self.loader in LOADERS, f"{prefix}.loader", self.loader, f"one of {', '.join(LOADERS)}")
        _check(self.loader == "memory" or self.name == "imagefolder", f"{prefix}.loader", self.loader,
               f"memory for data.name={self.name} (stream is for image folders too large for memory)")
        _check_range(f"{prefix}.val_fraction", self.val_fraction, "a fraction in [0, 0.9] (0 = no validation split)", 0.0, 0.9)


@dataclass
class ModelConfig:
    name: str = "vit_tiny_patch16_224"  # any timm model name
    # Overrides passed to timm.create_model; null leaves the model's own default.
    img_size: int = 32
    patch_size: typing.Optional[int] = 4
    embed_dim: typing.Optional[int] = 192
    depth: typing.Optional[int] = 12
    num_heads: typing.Optional[int] = 3
    drop_path_rate: float = 0.1
    patch_embed: str = "linear"  # ViTs: linear patch projection, or a convolutional stem (Xiao et al. 2021)
    pos_embed: str = "learned"  # ViTs: learned position embedding, or fixed 2-D sin-cos

    def validate(self, prefix: str) -> None:
        _check(bool(self.name), f"{prefix}.name", self.name, "a timm model name, e.g. vit_tiny_patch16_224")
        _check(self.patch_embed in PATCH_EMBEDS, f"{prefix}.patch_embed", self.patch_embed, f"one of {', '.join(PATCH_EMBEDS)}")
        _check(self.pos_embed in POS_EMBEDS, f"{prefix}.pos_embed", self.pos_embed, f"one of {', '.join(POS_EMBEDS)}")
        if self.patch_embed == "conv":  # the stem halves the resolution per stride-2 conv
            _check(self.patch_size is not None and self.patch_size >= 2 and self.patch_size & (self.patch_size - 1) == 0,
                   f"{prefix}.patch_size", self.patch_size, "a power of 2 (>= 2) with model.patch_embed=conv")
        _check_range(f"{prefix}.img_size", self.img_size, "an integer >= 8", low=8)
        for key in ("patch_size", "embed_dim", "depth", "num_heads"):
            value = getattr(self, key)
            if value is not None:
                _check_range(f"{prefix}.{key}", value, "an integer >= 1, or null", low=1)
        if self.patch_size is not None:
            _check(
                self.img_size % self.patch_size == 0,
                f"{prefix}.patch_size",
                self.patch_size,
                f"must divide model.img_size={self.img_size}",
            )
        if self.embed_dim is not None and self.num_heads is not None:
            _check(
                self.embed_dim % self.num_heads == 0,
                f"{prefix}.num_heads",
                self.num_heads,
                f"must divide model.embed_dim={self.embed_dim}",
            )
        _check_range(f"{prefix}.drop_path_rate", self.drop_path_rate, "a fraction in [0, 1)", 0.0, 0.999999)


@dataclass
class TrainConfig:
    """One training run: pretrain and finetune share these keys."""

    epochs: int = 100
    batch_size: int = 256
    optimizer: str = "adamw"
    lr: float = 5.0e-4
    weight_decay: float = 0.05
    momentum: float = 0.9  # sgd only
    warmup_epochs: float = 5
    min_lr: float = 1.0e-6
    label_smoothing: float = 0.1
    mixup_alpha: float = 0.8  # 0 turns mixup off
    cutmix_alpha: float = 1.0  # 0 turns cutmix off
    random_erasing: float = 0.25  # probability per image
    auto_augment: str = "none"  # none | randaugment | trivialaugment (torchvision's, on the device)
    auto_augment_magnitude: int = 9  # randaugment: strength of its 2 ops, 0-30
    crop_scale: list = field(default_factory=lambda: [0.25, 1.0])  # area fraction of random resized crops
    crop_padding: int = 0  # zero padding (pixels) around the image before cropping
    hflip: float = 0.5
    grad_clip: float = 0.0  # max gradient norm; 0 turns clipping off
    checkpoint_every: int = 10  # save resumable state every N epochs; 0 never
    ema_decay: float = 0.0  # exponential moving average of weights (e.g. 0.9998); 0 turns it off
    layer_decay: float = 0.0  # layer-wise lr decay (e.g. 0.65 for fine-tuning); 0 turns it off

    def validate(self, prefix: str) -> None:
        _check_range(f"{prefix}.epochs", self.epochs, "an integer >= 1", low=1)
        _check_range(f"{prefix}.batch_size", self.batch_size, "an integer >= 2", low=2)
        _check(self.optimizer in OPTIMIZERS, f"{prefix}.optimizer", self.optimizer, f"one of {', '.join(OPTIMIZERS)}")
        _check_range(f"{prefix}.lr", self.lr, "a number > 0", low=1e-12)
        _check_range(f"{prefix}.weight_decay", self.weight_decay, "a number >= 0", low=0)
        _check_range(f"{prefix}.momentum", self.momentum, "a number in [0, 1)", 0.0, 0.999999)
        _check_range(f"{prefix}.warmup_epochs", self.warmup_epochs, f"a number in [0, epochs={self.epochs})", 0, self.epochs - 1e-9)
        _check_range(f"{prefix}.min_lr", self.min_lr, f"a number in [0, lr={self.lr}]", 0, self.lr)
        _check_range(f"{prefix}.label_smoothing", self.label_smoothing, "a number in [0, 1)", 0.0, 0.999999)
        _check_range(f"{prefix}.mixup_alpha", self.mixup_alpha, "a number >= 0 (0 = off)", low=0)
        _check_range(f"{prefix}.cutmix_alpha", self.cutmix_alpha, "a number >= 0 (0 = off)", low=0)
        _check_range(f"{prefix}.random_erasing", self.random_erasing, "a probability in [0, 1]", 0.0, 1.0)
        _check(self.auto_augment in AUTO_AUGMENTS, f"{prefix}.auto_augment", self.auto_augment, f"one of {', '.join(AUTO_AUGMENTS)}")
        _check_range(f"{prefix}.auto_augment_magnitude", self.auto_augment_magnitude, "an integer in [0, 30]", 0, 30)
        _check_pair(f"{prefix}.crop_scale", self.crop_scale, 0.01, 1.0)
        _check_range(f"{prefix}.crop_padding", self.crop_padding, "an integer >= 0", low=0)
        _check_range(f"{prefix}.hflip", self.hflip, "a probability in [0, 1]", 0.0, 1.0)
        _check_range(f"{prefix}.grad_clip", self.grad_clip, "a number >= 0 (0 = off)", low=0)
        _check_range(f"{prefix}.checkpoint_every", self.checkpoint_every, "an integer >= 0 (0 = never)", low=0)
        _check_range(f"{prefix}.ema_decay", self.ema_decay, "a number in [0, 1) (0 = off)", 0.0, 0.999999999)
        _check_range(f"{prefix}.layer_decay", self.layer_decay, "a number in [0, 1] (0 = off)", 0.0, 1.0)
        if (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.batch_size % 2:
            raise ConfigError(f"{prefix}.batch_size", self.batch_size, "must be even when mixup or cutmix is on")


@dataclass
class FinetuneConfig(TrainConfig):
    init: str = "pretrained"  # the pretrain checkpoint (new head), scratch, or timm's ImageNet weights
    imagenet_weights: str = ""  # init=imagenet: a local weights file; "" downloads from the Hugging Face hub

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        _check(self.init in FINETUNE_INITS, f"{prefix}.init", self.init, f"one of {', '.join(FINETUNE_INITS)}")


@dataclass
class EvaluateConfig:
    batch_size: int = 512
    tta_flip: bool = False  # average the probabilities of each image and its mirror image

    def validate(self, prefix: str) -> None:
        _check_range(f"{prefix}.batch_size", self.batch_size, "an integer >= 1", low=1)


@dataclass
class VisualizeConfig:
    num_misclassified: int = 36
    num_synthetic: int = 64
    num_attention: int = 8  # test images shown with per-layer attention and rollout (0 = none)

    def validate(self, prefix: str) -> None:
        _check_range(f"{prefix}.num_misclassified", self.num_misclassified, "an integer >= 1", low=1)
        _check_range(f"{prefix}.num_synthetic", self.num_synthetic, "an integer >= 1", low=1)
        _check_range(f"{prefix}.num_attention", self.num_attention, "an integer in [0, 64] (0 = no attention maps)", 0, 64)


@dataclass
class TrackingConfig:
    experiment_name: str = "synthvit"
    log_model: bool = True  # log the fine-tuned model as an MLflow model
    registered_model: str = "synthvit-vit"  # register the logged model (log_model: true) under this name; "" = do not
    model_alias: str = "current"  # and point this alias at the new version: models:/NAME@ALIAS

    def validate(self, prefix: str) -> None:
        _check(bool(self.experiment_name), f"{prefix}.experiment_name", self.experiment_name, "a non-empty name")
        _check(
            self.registered_model == "" or (len(self.registered_model) <= 256 and "/" not in self.registered_model
                                            and ":" not in self.registered_model and self.registered_model.strip() == self.registered_model),
            f"{prefix}.registered_model", self.registered_model,
            "a model name without '/', ':' or surrounding spaces, or \"\" to not register",
        )
        _check(
            re.fullmatch(r"[\w\-]{1,255}", self.model_alias) is not None
            and self.model_alias.lower() != "latest" and re.fullmatch(r"[vV]\d+", self.model_alias) is None,
            f"{prefix}.model_alias", self.model_alias,
            "letters, digits, _ and -; not 'latest' or v<N>, which MLflow reserves",
        )


@dataclass
class Params:
    seed: int = 0
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    visualize: VisualizeConfig = field(default_factory=VisualizeConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def validate(self, prefix: str = "") -> None:
        _check(isinstance(self.seed, int) and self.seed >= 0, "seed", self.seed, "an integer >= 0")
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section):
                section.validate(f.name)
        if self.finetune.init == "imagenet":  # ImageNet checkpoints hold linear patch projections only
            _check(self.model.patch_embed == "linear", "model.patch_embed", self.model.patch_embed,
                   "linear with finetune.init=imagenet (ImageNet weights have no convolutional stem)")


def _type_ok(value, annotation) -> bool:
    """Whether a YAML value fits a field's annotation (ints pass as floats)."""
    if annotation in ("float", float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation in ("int", int):
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in ("bool", bool):
        return isinstance(value, bool)
    if annotation in ("str", str):
        return isinstance(value, str)
    if annotation in ("list", list):
        return isinstance(value, list)
    if annotation == "typing.Optional[int]":
        return value is None or _type_ok(value, int)
    raise TypeError(f"unsupported annotation {annotation!r}")


_TYPE_WORDS = {"float": "a number", "int": "an integer", "bool": "true or false", "str": "a string",
               "list": "a list", "typing.Optional[int]": "an integer or null"}


def _build(cls, raw: dict, prefix: str):
    """Make a dataclass from a YAML mapping, naming any unknown key or wrong type."""
    if not isinstance(raw, dict):
        raise ConfigError(prefix, raw, "a mapping of keys to values")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(key, raw[unknown[0]], f"unknown key; known keys here: {', '.join(fields)}")
    values = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        annotation = fields[name].type
        if isinstance(annotation, str) and annotation in _SECTIONS:
            values[name] = _build(_SECTIONS[annotation], value, key)
        else:
            if isinstance(annotation, str) and annotation == "float" and isinstance(value, int):
                value = float(value)
            if not _type_ok(value, annotation):
                raise ConfigError(key, value, f"must be {_TYPE_WORDS[str(annotation)]}")
            values[name] = value
    return cls(**values)


_SECTIONS = {cls.__name__: cls for cls in (RuntimeConfig, SyntheticConfig, DataConfig, ModelConfig,
                                           TrainConfig, FinetuneConfig, EvaluateConfig, VisualizeConfig, TrackingConfig)}


def parse_params(raw: dict) -> Params:
    """Validate a params mapping (as loaded from YAML) into Params."""
    params = _build(Params, raw or {}, "")
    params.validate()
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found: run from the repository root, where params.yaml lives")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {exc}") from None
    return parse_params(raw)


def as_flat_dict(section, prefix: str) -> dict:
    """`{"prefix.key": value}` for logging a section as MLflow params."""
    return {f"{prefix}.{k}": v for k, v in dataclasses.asdict(section).items()}
