"""Typed, validated view of params.yaml (pydantic v2).

Every section is a pydantic model: `Literal` choices, bounds on `Field`, exact types
(`strict`: "ten" is not an integer, 1 is not true) and unknown keys rejected
(`extra="forbid"`). Rules that tie two keys together live in the section's
`model_validator` and raise `invalid(key, value, allowed)`. `parse_params` is the one
place that turns pydantic's ValidationError into a one-line ConfigError naming the key,
the value and what is allowed, so a stage fails on its first line.

Defaults: the `Field` defaults below are the only ones in code. The repository's
params.yaml writes every key out with the same value (DVC tracks only keys present in
the file, and its comments are the user's documentation);
tests/unit/test_config.py::test_params_yaml_spells_out_every_default fails when they drift.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Annotated, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from synthvit.errors import ConfigError, UserError, rebuild_hint

SyntheticKind = Literal["fractaldb", "ofdb", "onepfrac"]
Dataset = Literal["cifar10", "cifar100", "mnist", "imagefolder"]
Device = Literal["auto", "cuda", "cpu"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
DATASETS, DEVICES, PRECISIONS = get_args(Dataset), get_args(Device), get_args(Precision)

Fraction = Annotated[float, Field(ge=0, lt=1)]
Probability = Annotated[float, Field(ge=0, le=1)]
Count = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]
Override = Annotated[int, Field(ge=1)] | None  # a timm create_model override; null keeps the model's default


def invalid(key: str, value, allowed: str) -> PydanticCustomError:
    """The error a cross-key rule raises: `key` is the field within the section that is wrong."""
    return PydanticCustomError(
        "invalid", "{key} is invalid: {allowed}", {"key": key, "value": value, "allowed": allowed}
    )


class Section(BaseModel):
    # protected_namespaces: tracking.model_alias is a params key, not pydantic's model_* API.
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, protected_namespaces=())


class RuntimeConfig(Section):
    device: Device = Field("auto", description="auto picks CUDA when present")
    precision: Precision = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU; fp16 uses a loss scaler"
    )
    num_threads: Count = Field(0, description="torch CPU threads; 0 keeps torch's default")
    deterministic: bool = False  # deterministic kernels (bit-reproducible runs, slower on GPU)
    compile: bool = False  # torch.compile the model for training
    launcher: str = "python"  # the command dvc.yaml runs training stages with, e.g. "torchrun --nproc-per-node 4"

    @model_validator(mode="after")
    def _launcher_runs_python(self):
        program = Path((self.launcher.split() or [""])[0]).name  # python, or a path to it: .venv/bin/python
        if program not in ("python", "python3", "torchrun"):
            raise invalid(
                "launcher", self.launcher, "python, or torchrun with its options (e.g. torchrun --nproc-per-node 4)"
            )
        return self


class SyntheticConfig(Section):
    kind: SyntheticKind = "fractaldb"
    num_classes: int = Field(1000, ge=2)
    instances_per_class: Positive = Field(100, description="fractaldb only; ofdb and onepfrac draw one image per class")
    image_size: int = Field(64, ge=8, le=4096)
    num_points: int = Field(10000, ge=100, description="chaos-game points per image")
    patch: Literal["random", "full"] = Field("full", description="3x3 point patches: random masks (FractalDB) or solid")
    pad: Count = Field(0, description="pixels kept clear on each side (FractalDB: 6)")
    gray_value: int = Field(255, ge=1, le=255, description="value of a lit pixel (FractalDB: 127)")
    color: Literal["gray", "rgb"] = Field("gray", description="rgb: three equal channels, as FractalDB's files")
    fill_rate: Fraction = Field(
        0.2, description="fractaldb/ofdb: keep a category when its 512-px point render fills >= this"
    )
    onepfrac_fill_rate: Fraction = Field(
        0.05, description="onepfrac: keep a perturbation when its 512-px patch render fills > this"
    )
    min_maps: Positive = 2
    max_maps: Positive = 7
    instance_weights: float = Field(
        0.1, gt=0, le=0.5, description="fractaldb: weight set step (FractalDB ships 0.1 and 0.4)"
    )
    sigma: float = Field(3.5, gt=0, description="onepfrac: sigma-factor of the single IFS (drawn within +-0.1)")
    onepfrac_maps: Positive = Field(2, description="onepfrac: affine maps in the single IFS (1p-frac uses 2)")
    delta: Fraction = Field(0.1, description="onepfrac: each coefficient times U(1-delta, 1+delta)")
    max_attempts: Positive = Field(1000, description="IFS draws allowed per category before giving up")
    store: Literal["manifest", "shards", "images"] = Field(
        "manifest",
        description="manifest: formulas only, pre-training renders on the fly | shards: + one uint8 .npy "
        "per group of categories | images: + one PNG per image",
    )
    fresh_instances: bool = Field(False, description="pre-training renders new patch masks and walks every epoch")

    @model_validator(mode="after")
    def _consistent(self):
        if self.max_maps < self.min_maps:
            raise invalid("max_maps", self.max_maps, f"an integer >= min_maps ({self.min_maps})")
        if self.kind == "onepfrac" and self.sigma > 3 * self.onepfrac_maps:  # each map adds s1 + 2*s2 <= 3 to sigma
            raise invalid(
                "sigma",
                self.sigma,
                f"a number in (0, {3 * self.onepfrac_maps}]: at most 3 per map (onepfrac_maps={self.onepfrac_maps})",
            )
        if self.image_size - 2 * self.pad < 3:
            raise invalid("pad", self.pad, f"an integer >= 0 leaving >= 3 pixels (image_size={self.image_size})")
        return self


class DataConfig(Section):
    name: Dataset = "cifar10"
    root: str = Field("data/cifar10", min_length=1)
    download: bool = True  # cifar10 only: fetch through torchvision when root holds no copy
    train_per_class: Count = Field(0, description="0 keeps all")
    test_per_class: Count = Field(0, description="0 keeps all")
    num_workers: Count = Field(4, description="image decoding threads (processes when streaming)")
    val_fraction: float = Field(0.0, ge=0, le=0.9, description="held out of train to pick the best epoch; 0 = none")
    ignore_class_case: bool = False  # imagefolder: match train/ and test/ class folders case-insensitively
    loader: Literal["memory", "stream"] = Field(
        "memory", description="stream: imagefolder train split decoded per batch"
    )

    @model_validator(mode="after")
    def _stream_needs_folder(self):
        if self.loader == "stream" and self.name != "imagefolder":
            raise invalid(
                "loader",
                self.loader,
                f"memory for data.name={self.name} (stream is for image folders too large for memory)",
            )
        return self


class ModelConfig(Section):
    name: str = Field("vit_tiny_patch16_224", min_length=1, description="a timm model name")
    # Overrides passed to timm.create_model; null leaves the model's own default.
    img_size: int = Field(32, ge=8)
    patch_size: Override = 4
    embed_dim: Override = 192
    depth: Override = 12
    num_heads: Override = 3
    drop_path_rate: Fraction = 0.1
    patch_embed: Literal["linear", "conv"] = Field(
        "linear", description="ViTs: conv is a convolutional stem (Xiao et al. 2021)"
    )
    pos_embed: Literal["learned", "sincos"] = Field("learned", description="ViTs: sincos is a fixed 2-D embedding")

    def summary(self) -> str:
        """What the model is, in words: 'ViT of 6 blocks, width 128, 4 heads, linear 4-px patches, at 32 px'."""
        if self.depth is None or self.embed_dim is None:
            return f"timm {self.name} at {self.img_size} px"
        patches = f"{'convolutional stem to' if self.patch_embed == 'conv' else 'linear'} {self.patch_size}-px patches"
        return (
            f"ViT of {self.depth} blocks, width {self.embed_dim}, {self.num_heads} heads, {patches}, "
            f"{self.pos_embed} positions, at {self.img_size} px (timm {self.name})"
        )

    @model_validator(mode="after")
    def _shapes_fit(self):
        patch = self.patch_size
        # A conv stem halves the image with one stride-2 conv per step: the patch must be a power of 2.
        if self.patch_embed == "conv" and (patch is None or patch < 2 or patch & (patch - 1)):
            raise invalid("patch_size", patch, "a power of 2 (>= 2) with model.patch_embed=conv")
        if patch is not None and self.img_size % patch:
            raise invalid("patch_size", patch, f"must divide model.img_size={self.img_size}")
        if self.embed_dim is not None and self.num_heads is not None and self.embed_dim % self.num_heads:
            raise invalid("num_heads", self.num_heads, f"must divide model.embed_dim={self.embed_dim}")
        return self


class TrainConfig(Section):
    """One training run. These defaults are pretrain's recipe; FinetuneConfig overrides some."""

    epochs: Positive = 100
    batch_size: int = Field(256, ge=2)
    optimizer: Literal["adamw"] = "adamw"  # timm's fused AdamW
    lr: float = Field(5.0e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(5, ge=0)
    min_lr: float = Field(1.0e-6, ge=0)
    label_smoothing: Fraction = 0.1
    mixup_alpha: float = Field(0.8, ge=0, description="0 = off")
    cutmix_alpha: float = Field(1.0, ge=0, description="0 = off")
    random_erasing: Probability = Field(0.25, description="probability per image")
    auto_augment: Literal["none", "randaugment", "trivialaugment"] = "none"
    auto_augment_magnitude: int = Field(9, ge=0, le=30, description="randaugment: strength of its 2 ops")
    crop_scale: list[float] = Field([0.25, 1.0], description="area fraction [min, max] of random resized crops")
    crop_padding: Count = Field(0, description="zero padding (pixels) around the image before cropping")
    hflip: Probability = 0.5
    grad_clip: float = Field(0.0, ge=0, description="max gradient norm; 0 = off")
    checkpoint_every: Count = Field(10, description="save resumable state every N epochs; 0 = never")
    ema_decay: Fraction = Field(0.0, description="weight EMA, e.g. 0.9998; 0 = off")
    layer_decay: Probability = Field(0.0, description="layer-wise lr decay, e.g. 0.65; 0 = off")

    @model_validator(mode="after")
    def _consistent(self):
        low, high = self.crop_scale if len(self.crop_scale) == 2 else (1, 0)
        if not 0.01 <= low <= high <= 1.0:
            raise invalid("crop_scale", self.crop_scale, "a pair [min, max] with 0.01 <= min <= max <= 1.0")
        if self.warmup_epochs >= self.epochs:
            raise invalid("warmup_epochs", self.warmup_epochs, f"a number in [0, epochs={self.epochs})")
        if self.min_lr > self.lr:
            raise invalid("min_lr", self.min_lr, f"a number in [0, lr={self.lr}]")
        if (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.batch_size % 2:
            raise invalid("batch_size", self.batch_size, "must be even when mixup or cutmix is on")
        return self


class PretrainConfig(TrainConfig):
    init: Literal["random", "mimetic"] = Field(
        "random", description="the starting weights: timm's random init, or mimetic attention (models.mimetic_init)"
    )
    labels: Literal["categories", "shuffled"] = Field(
        "categories",
        description="shuffled: each image a random category, fixed per image (a control: the same "
        "images without their formula-driven categories)",
    )
    heldout_per_class: Count = Field(
        10, description="fractal instances per category that training never draws, scored every epoch; 0 = none"
    )
    random_colors: bool = Field(
        False, description="each image a random foreground and background colour (the fractals are gray)"
    )


class FinetuneConfig(TrainConfig):
    init: Literal["pretrained", "scratch", "mimetic", "imagenet"] = Field(
        "pretrained",
        description="the backbone (new head), scratch (timm's random init), mimetic (random, with mimetic "
        "attention: no data), or timm's ImageNet weights",
    )
    backbone: str = Field(
        "models/pretrain.pt",
        min_length=1,
        description="init=pretrained: a pretrain checkpoint, or a folder `synthvit export` wrote (a released backbone)",
    )
    seed: Count | None = Field(
        None,
        description="fine-tuning's draws (random init, head, order, augmentation, validation split); null = the "
        "global seed. Arms that share it share the head, the order and the augmentation: paired seeds",
    )
    imagenet_weights: str = Field("", description="init=imagenet: a local weights file; empty downloads from the hub")
    # Fine-tuning's recipe where it differs from pre-training's.
    epochs: Positive = 200
    batch_size: int = Field(128, ge=2)
    lr: float = Field(1.0e-3, gt=0)
    auto_augment: Literal["none", "randaugment", "trivialaugment"] = "randaugment"
    crop_scale: list[float] = Field([0.6, 1.0], description="area fraction [min, max] of random resized crops")
    crop_padding: Count = Field(4, description="zero padding (pixels) around the image before cropping")
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm; 0 = off")
    curve_test_per_class: Count = Field(
        0,
        description="data.val_fraction 0: score the per-epoch test curve on at most N test images per class "
        "(0 = all); evaluate always scores the whole test split",
    )


class EvaluateConfig(Section):
    batch_size: Positive = 512
    tta_flip: bool = False  # average the probabilities of each image and its mirror image


class VisualizeConfig(Section):
    num_misclassified: Positive = 36
    num_synthetic: Positive = 64
    num_attention: int = Field(8, ge=0, le=64, description="test images shown with attention maps; 0 = none")


class TrackingConfig(Section):
    experiment_name: str = Field("synthvit", min_length=1)
    log_model: bool = True  # log the fine-tuned model as an MLflow model
    registered_model: str = "synthvit-vit"  # register the logged model under this name; "" = do not
    model_alias: str = "current"  # and point this alias at the new version: models:/NAME@ALIAS

    @model_validator(mode="after")
    def _mlflow_accepts_names(self):
        name = self.registered_model
        if name and (len(name) > 256 or "/" in name or ":" in name or name.strip() != name):
            raise invalid(
                "registered_model", name, "a model name without '/', ':' or surrounding spaces, or \"\" to not register"
            )
        alias = self.model_alias
        if not re.fullmatch(r"[\w\-]{1,255}", alias) or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
            raise invalid("model_alias", alias, "letters, digits, _ and -; not 'latest' or v<N>, which MLflow reserves")
        return self


class Params(Section):
    seed: Count = 0
    runtime: RuntimeConfig = RuntimeConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    pretrain: PretrainConfig = PretrainConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    visualize: VisualizeConfig = VisualizeConfig()
    tracking: TrackingConfig = TrackingConfig()

    @property
    def finetune_seed(self) -> int:
        return self.seed if self.finetune.seed is None else self.finetune.seed

    @model_validator(mode="after")
    def _imagenet_weights_fit(self):
        if self.finetune.init == "imagenet" and self.model.patch_embed != "linear":  # ImageNet ViTs have no conv stem
            raise invalid(
                "model.patch_embed",
                self.model.patch_embed,
                "linear with finetune.init=imagenet (ImageNet weights have no convolutional stem)",
            )
        return self


# ---- ValidationError -> one line ---------------------------------------------------------------

_TYPE_WORDS = {"integer": "an integer", "number": "a number", "boolean": "true or false", "string": "a string"}
_LOWER_BOUNDS = {"minimum": ("[", ">="), "exclusiveMinimum": ("(", ">")}
_UPPER_BOUNDS = {"maximum": ("]", "<="), "exclusiveMaximum": (")", "<")}


def _bounds(schema: dict) -> str:
    """' >= 1', ' > 0', ' in [0, 1)': a field's Field(ge=, gt=, le=, lt=) in words, from its JSON schema."""
    low = [(schema[key], *signs) for key, signs in _LOWER_BOUNDS.items() if key in schema]
    high = [(schema[key], *signs) for key, signs in _UPPER_BOUNDS.items() if key in schema]
    if low and high:
        (low_value, opening, _), (high_value, closing, _) = low[0], high[0]
        return f" in {opening}{low_value:g}, {high_value:g}{closing}"
    return "".join(f" {sign} {value:g}" for value, _, sign in low + high)


def describe(schema: dict) -> str:
    """What a field accepts, in words, from its JSON schema (pydantic's model_json_schema):
    'an integer >= 1', 'one of memory, stream', 'a number in [0, 1) (0 = off)'."""
    options = schema.get("anyOf", [schema])
    accepted = next(option for option in options if option.get("type") != "null")
    if "enum" in accepted or "const" in accepted:
        text = "one of " + ", ".join(map(str, accepted.get("enum", [accepted.get("const")])))
    elif accepted["type"] == "array":
        text = "a list of numbers"
    elif accepted.get("minLength"):
        text = "a non-empty string"
    else:
        text = _TYPE_WORDS[accepted["type"]] + _bounds(accepted)
    if {"type": "null"} in options:
        text += ", or null"
    return f"{text} ({schema['description']})" if "description" in schema else text


def _config_error(exc: ValidationError, raw, source: str) -> ConfigError:
    """The first of pydantic's errors as a ConfigError: dotted key, the value given, what is allowed."""
    error = exc.errors(include_url=False)[0]
    loc, kind, ctx = error["loc"], error["type"], error.get("ctx", {})
    if kind == "invalid":  # a cross-key rule: loc is its section (none for a Params-level rule, which names it)
        return ConfigError(".".join(map(str, (*loc, ctx["key"]))), ctx["value"], ctx["allowed"], source)
    named = loc[:2]  # (section, key) or (top-level key,): the key, not an item of its list (crop_scale)
    section = Params.model_fields[named[0]].annotation if len(named) == 2 else Params
    key = ".".join(map(str, named)) or "(top level)"
    value = error["input"] if named == loc else raw[named[0]][named[1]]  # an item's error shows the whole list
    if kind == "extra_forbidden":
        allowed = f"unknown key; known keys here: {', '.join(section.model_fields)}"
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        allowed = "a mapping of keys to values"
    else:
        schema = section.model_json_schema()["properties"][named[-1]]
        allowed = describe(schema)
        if kind.endswith(("_type", "_parsing")):  # a wrong type: say which type
            allowed = f"must be {allowed}"
            if schema.get("type") == "number" and isinstance(value, str) and YAML12_FLOAT.fullmatch(value):
                allowed += f" (YAML 1.1 reads {value} as text: write it with a dot, e.g. 1.0e-3)"
    return ConfigError(key, value, allowed, source)


def parse_params(raw: dict | None, source: str = "params.yaml") -> Params:
    """Validate a params mapping (as loaded from YAML) into Params; missing keys take their defaults.
    `source` names the file in error messages."""
    try:
        return Params.model_validate({} if raw is None else raw)
    except ValidationError as exc:
        raise _config_error(exc, raw, source) from None


class DuplicateKey(yaml.YAMLError):
    """A key written twice in one mapping; the message names it and its lines."""


class StrictLoader(yaml.SafeLoader):
    """YAML as DVC reads params files: a key written twice in one mapping is an error
    (PyYAML alone would keep the last one silently, while DVC refuses the file)."""


def _unique_mapping(loader: StrictLoader, node: yaml.MappingNode) -> dict:
    lines = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in lines:
            raise DuplicateKey(
                f"key {key!r} is written twice (lines {lines[key]} and {line}); DVC refuses such a file: keep one"
            )
        lines[key] = line
    return loader.construct_mapping(node, deep=True)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)
# DVC reads and writes params.yaml as YAML 1.2, where 1e-06 is a number (and `dvc exp run -S x=1.0e-6`
# writes it back as 1e-06); PyYAML's YAML 1.1 rules would take it for text (a float with an exponent, no dot).
YAML12_FLOAT = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")
StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", YAML12_FLOAT, list("-+0123456789."))


def read_yaml(path: Path):
    """A YAML file as DVC reads it (duplicate keys refused); errors are one line naming the file and the fix."""
    try:
        return yaml.load(path.read_text(), Loader=StrictLoader)
    except DuplicateKey as exc:
        raise UserError(f"{path}: {exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise UserError(f"{path} is not valid YAML ({problem}{where}); {rebuild_hint(path)}") from None


def read_params_file(path: str | Path = "params.yaml") -> dict:
    """params.yaml as written (a mapping, unvalidated), with one-line errors for a missing or damaged file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found: run from the repository root, where params.yaml lives")
    raw = read_yaml(path)
    if raw is not None and not isinstance(raw, dict):
        raise UserError(
            f"{path} is damaged: it holds a {type(raw).__name__}, not sections of params; {rebuild_hint(path)}"
        )
    return raw or {}


def load_params(path: str | Path = "params.yaml") -> Params:
    return parse_params(read_params_file(path), source=str(path))


def declared_params(stage: str, pipeline: Path = Path("dvc.yaml")) -> list[str]:
    """The params keys (sections or dotted keys) dvc.yaml declares for `stage`: what DVC records in dvc.lock.
    None ([]) outside a pipeline (no dvc.yaml where the stage runs): no dvc.lock will record them."""
    if not pipeline.is_file():
        return []
    declared = (read_yaml(pipeline) or {}).get("stages", {}).get(stage, {}).get("params", [])
    return [key for entry in declared for key in ([entry] if isinstance(entry, str) else entry)]


def first_difference(before, after, key: str) -> tuple[str, object, object] | None:
    """(dotted key, value before, value after) of the first leaf where two params values differ, else None."""
    if not (isinstance(before, dict) and isinstance(after, dict)):
        return None if before == after else (key, before, after)
    leaves = (
        first_difference(before.get(k, MISSING), after.get(k, MISSING), f"{key}.{k}") for k in {**before, **after}
    )
    return next(filter(None, leaves), None)


def check_params_unchanged(stage: str, started_with: dict, path: Path = Path("params.yaml")) -> None:
    """Stop before a stage writes its outputs when params.yaml no longer holds, for a key dvc.yaml declares,
    the value the stage read when it started: DVC writes dvc.lock from the file as it is at the end, and
    would record values the outputs were not made with (an editor, or a `dvc exp run -S` refused because
    this run holds the lock, rewrites the file)."""
    now = read_params_file(path)
    for key in declared_params(stage):
        changed = first_difference(value_at(started_with, key), value_at(now, key), key)
        if changed:
            name, before, after = changed
            shown = lambda value: "(not set)" if value is MISSING else repr(value)
            raise UserError(
                f"{path} changed while {stage} ran: {name} was {shown(before)} when it started and is "
                f"{shown(after)} now, so no outputs were written (dvc.lock would have paired {shown(after)} with "
                f"results made with {shown(before)}); set it back and run `dvc repro` (training resumes from its "
                "saved state), or keep the new value and run `dvc repro` to make them with it"
            )


# ---- named recipes (recipes.yaml) ----------------------------------------------------------

RECIPES_FILE = Path("recipes.yaml")


def load_recipes(path: Path = RECIPES_FILE) -> dict:
    """recipes.yaml: {name: {about, include: [names], set: {dotted key: value}}}."""
    if not path.is_file():
        raise UserError(f"{path} not found: run from the repository root, where recipes.yaml lives")
    recipes = read_yaml(path) or {}
    for name, recipe in recipes.items():
        unknown = set(recipe) - {"about", "include", "set"}
        if unknown:
            raise UserError(f"{path}: recipe {name!r} has unknown keys {sorted(unknown)}; allowed: about, include, set")
    return recipes


def recipe_overrides(name: str, recipes: dict | None = None, baseline: dict | None = None) -> dict:
    """The recipe's `{dotted key: value}` overrides, its includes first (a later value of a key wins).

    With `baseline` (the committed params, `committed_params()`), also every key another recipe sets,
    at its baseline value: `dvc exp run` starts from the workspace's params.yaml, which holds whatever
    ran last, so without them a recipe run after another would inherit that one's values."""
    recipes = load_recipes() if recipes is None else recipes

    def own(recipe_name: str) -> dict:
        if recipe_name not in recipes:
            raise UserError(f"no recipe {recipe_name!r} in {RECIPES_FILE}; recipes: {', '.join(recipes)}")
        recipe = recipes[recipe_name]
        overrides = {}
        for included in recipe.get("include") or []:
            overrides.update(own(included))
        overrides.update(recipe.get("set") or {})
        return overrides

    overrides = own(name)
    if baseline is None:
        return overrides
    others = sorted({key for other in recipes for key in own(other)} - set(overrides))
    reset = {key: value_at(baseline, key) for key in others if value_at(baseline, key) is not MISSING}
    return {**reset, **overrides}


MISSING = object()


def value_at(raw: dict, dotted: str):
    """The value of a dotted key in a params mapping, or MISSING."""
    node = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def committed_params(path: Path = Path("params.yaml")) -> dict:
    """params.yaml as the last commit holds it (what recipes apply to), or the file when git has none."""
    try:
        shown = subprocess.run(["git", "show", f"HEAD:{path}"], capture_output=True, text=True)
    except OSError:  # no git on this machine (a copy of the tree on a lent GPU machine)
        shown = None
    text = shown.stdout if shown and shown.returncode == 0 else path.read_text()
    return yaml.load(text, Loader=StrictLoader) or {}


def apply_overrides(raw: dict, overrides: dict) -> dict:
    """A params mapping with `{dotted key: value}` overrides applied, as `dvc exp run -S` applies them."""
    raw = {section: dict(values) if isinstance(values, dict) else values for section, values in raw.items()}
    for key, value in overrides.items():
        *sections, leaf = key.split(".")
        node = raw
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    return raw
