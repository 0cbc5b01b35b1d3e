"""`synthvit bench pretrain`: pre-training img/s on batches rendered from the manifest
against the same images preloaded as a uint8 tensor, in one run.

It reads the synthetic set that generate_synthetic wrote (data/synthetic) and the
params (model, pretrain recipe, runtime, data.num_workers: on CUDA the DataLoader
workers that draw each batch's random numbers for the GPU to render; on a CPU the
training process renders with numpy). Both sides train the same freshly initialised model for one
epoch over the same images (--images of them, spread evenly over every category of the
set) through the engine, alternating, so both see the same machine load; the cost of
rendering is 1 - rendered / preloaded img/s (medians).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import yaml

from synthvit.commands.bench import timed
from synthvit.config import apply_overrides, parse_params, read_params_file
from synthvit.data.fractals import RenderedFractals, RenderedImages, read_manifest
from synthvit.data.images import TensorImages
from synthvit.files import SYNTHETIC_DIR
from synthvit.models import create_model
from synthvit.runtime import resolve_device, seed_everything
from synthvit.synthetic.source import ManifestImages
from synthvit.training.engine import train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--synthetic", type=Path, default=SYNTHETIC_DIR, help="the generated set (default: %(default)s)"
    )
    parser.add_argument("--params", default="params.yaml")
    override = "override a params key, as dvc exp run -S does (e.g. -S model.depth=6)"
    parser.add_argument("--set", "-S", action="append", default=[], metavar="KEY=VALUE", help=override)
    parser.add_argument("--images", type=int, default=1024, help="images per timed epoch (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="timed epochs per side (the median counts)")


def run(args) -> int:
    overrides = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in args.set)}
    params = parse_params(apply_overrides(read_params_file(args.params), overrides), args.params)
    images = ManifestImages(read_manifest(args.synthetic))
    count = min(args.images, len(images))
    indices = np.linspace(0, len(images) - 1, count).round().astype(np.int64)
    rendered = RenderedImages(images, params.model.img_size, indices=indices)
    tensor, rendering = timed(rendered.tensor)
    _, drawing = timed(rendered.draws, list(range(count)))  # what each DataLoader worker does on CUDA
    sets = {
        "rendered": RenderedFractals(rendered, images.names, rendered.labels),
        "preloaded": TensorImages(tensor, rendered.labels, images.names),
    }
    cfg = params.pretrain.model_copy(update={"epochs": 1, "warmup_epochs": 0, "checkpoint_every": 0})
    print(
        f"pre-training {params.model.name} (depth {params.model.depth}, dim {params.model.embed_dim}) at "
        f"{params.model.img_size}px, batch {cfg.batch_size}, on {count} of the {len(images)} images of "
        f"{args.synthetic} ({len(images.names)} categories, rendered at {images.settings.image_size}px, "
        f"{images.settings.num_points} points); rendering alone, one process: {count / rendering:.0f} img/s; "
        f"drawing the GPU renderer's random numbers alone, one process: {count / drawing:.0f} img/s"
    )
    rates, workers = {name: [] for name in sets}, params.data.num_workers
    for repeat in range(args.repeats):
        for name in sorted(sets, reverse=bool(repeat % 2)):  # alternate which side goes first
            seed_everything(params.seed)
            model = create_model(params.model, num_classes=len(images.names))
            history = train(model, sets[name], cfg, params.runtime, params.seed, desc=name, num_workers=workers)
            rates[name].append(history[0]["train_images_per_s"])
    median = {name: statistics.median(values) for name, values in rates.items()}
    on_gpu = resolve_device(params.runtime).type == "cuda"
    where = f"on the GPU, {workers} DataLoader workers drawing" if on_gpu else "in the training process"
    labels = {"rendered": f"rendered on the fly ({where})", "preloaded": "preloaded uint8 tensor"}
    for name, label in labels.items():
        epochs = ", ".join(f"{rate:.1f}" for rate in rates[name])
        print(f"{label + ':':<46} {median[name]:8.1f} img/s  (epochs: {epochs})")
    cost = 1 - median["rendered"] / median["preloaded"]
    print(f"cost of rendering on the fly: {cost:+.1%} of the preloaded throughput")
    return 0
