"""`synthvit bench train`: training images/s of the engine against a bare step and a plain DataLoader loop.

All sides train the same timm model at the same batch size, resolution and precision
(and, with --compile, all through torch.compile) on the same images:
- bare: one batch already on the device, forward, backward, optimizer step; no data, no
  augmentation: the ceiling the engine is measured against;
- plain: a torchvision-style dataset of PIL images, per-sample transforms, a DataLoader
  with worker processes, the usual `for x, y in loader` loop;
- engine: synthvit's in-memory uint8 tensor, batch augmentation on the device.
Plain and engine run with --augment light (pad-and-crop, horizontal flip), full
(params.yaml's finetune recipe: RandAugment, random resized crop, Mixup/CutMix, random
erasing) or both. Each of them runs a warm-up epoch, then a timed one (the bare step a few
warm-up steps, then an epoch's worth); the figures come from one run, side by side, and
the ratios are what to compare across machines. The training FLOPs per image (torch's
FlopCounterMode) turn img/s into TFLOP/s; on CUDA these are also given as a fraction of
the card's bf16 peak, from its datasheet and from an 8192^3 bf16 matmul timed in the same
run.
"""

from __future__ import annotations

import argparse
import functools

import torch
from PIL import Image
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils import benchmark
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from synthvit.config import DataConfig, ModelConfig, RuntimeConfig, TrainConfig, load_params
from synthvit.data.augment import auto_augment_policy, build_mixup, to_float
from synthvit.data.images import TensorImages, load_split
from synthvit.models import DEFAULT_MEAN, DEFAULT_STD, create_model
from synthvit.runtime import autocast, autocast_dtype, resolve_device, seed_everything
from synthvit.training.engine import train

# Dense bf16 tensor-core peaks from NVIDIA's datasheets, which quote them "with sparsity":
# half of that. H200 SXM: 1,979 TFLOP/s sparse; H200 NVL: 1,671 (H200 datasheet, 2024).
DATASHEET_BF16_PEAK = {"H200 NVL": 835.5e12, "H200": 989.5e12}

# Light: what this bench always measured, pad-and-crop and a flip.
LIGHT = TrainConfig(
    lr=1e-3, mixup_alpha=0.0, cutmix_alpha=0.0, random_erasing=0.0, crop_scale=[1.0, 1.0], crop_padding=4
)
# The options that size the model, named as ModelConfig's fields.
MODEL_SIZES = ("img_size", "patch_size", "depth", "embed_dim", "num_heads")
# Either recipe trains two epochs (the first warms up), without warm-up of the lr or checkpoints.
TIMED = {"epochs": 2, "warmup_epochs": 0, "checkpoint_every": 0}


class PILDataset(Dataset):
    """What typical training code has: PIL images and per-sample torchvision transforms."""

    def __init__(self, data: TensorImages, transform):
        self.images = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in data.images]
        self.labels, self.transform = data.labels.tolist(), transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def per_sample_transform(cfg: TrainConfig, img_size: int):
    """The recipe's augmentation as typical code writes it: PIL transforms, one image at a time."""
    steps = [
        auto_augment_policy(cfg.auto_augment, cfg.auto_augment_magnitude),  # the engine's policy, or None
        transforms.RandomCrop(img_size, padding=cfg.crop_padding),
        transforms.RandomResizedCrop(img_size, scale=tuple(cfg.crop_scale)) if cfg.crop_scale != [1.0, 1.0] else None,
        transforms.RandomHorizontalFlip(cfg.hflip),
        transforms.ToTensor(),
        transforms.Normalize(DEFAULT_MEAN, DEFAULT_STD),
        transforms.RandomErasing(cfg.random_erasing) if cfg.random_erasing > 0 else None,
    ]
    return transforms.Compose([step for step in steps if step is not None])


def train_step(forward, optimizer, criterion, x, target, device, amp_dtype, grad_clip: float = 0.0) -> None:
    """One step as typical training code writes it: forward under autocast, backward, clip, optimizer step."""
    with autocast(device, amp_dtype):
        loss = criterion(forward(x), target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(forward.parameters(), grad_clip)
    optimizer.step()


def plain_loop_images_per_s(
    model, forward, data: TensorImages, cfg: TrainConfig, device, amp_dtype, workers: int
) -> float:
    """A timed epoch, after one that warms up workers, kernels and caches, of the usual `for x, y in loader` loop."""
    dataset = PILDataset(data, per_sample_transform(cfg, data.images.shape[-1]))
    loader = DataLoader(
        dataset,
        cfg.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    mixup = build_mixup(cfg, data.num_classes)  # timm's, on the batch: what timm's own train.py does
    criterion = SoftTargetCrossEntropy() if mixup else nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    for _ in range(2):
        started = benchmark.timer()  # torch's benchmark clock, which first waits for the GPU
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            x, target = mixup(x, y) if mixup else (x, y)
            train_step(forward, optimizer, criterion, x, target, device, amp_dtype, cfg.grad_clip)
    return len(loader) * cfg.batch_size / (benchmark.timer() - started)


def bare_step_images_per_s(model, forward, data: TensorImages, batch_size: int, device, amp_dtype) -> float:
    """The step alone on one batch already on the device, with the engine's optimizer (timm's fused AdamW):
    an epoch's worth of steps after a few warm-up steps, timed by torch's benchmark Timer."""
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05, fused=True)
    x = to_float(data.images[:batch_size].to(device), DEFAULT_MEAN, DEFAULT_STD)
    y = data.labels[:batch_size].to(device)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    step = functools.partial(train_step, forward, optimizer, criterion, x, y, device, amp_dtype)
    timer = benchmark.Timer("step()", globals={"step": step}, num_threads=torch.get_num_threads())
    return batch_size / timer.timeit(len(data) // batch_size).mean


def train_flops_per_image(model_cfg: ModelConfig, num_classes: int) -> float:
    """Forward and backward FLOPs of one image, counted by torch on a CPU copy of the model (2 images)."""
    model = create_model(model_cfg, num_classes).train()
    x = torch.randn(2, 3, model_cfg.img_size, model_cfg.img_size)
    # The math attention is matmuls the counter sees; it has no formula for the CPU's fused attention kernel.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / 2


def matmul_peak(device: torch.device, n: int = 8192) -> float:
    """FLOP/s of an n^3 bf16 matmul on `device` (torch's benchmark Timer synchronises CUDA)."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    timer = benchmark.Timer(stmt="a @ b", globals={"a": a, "b": b})
    return 2 * n**3 / timer.blocked_autorange(min_run_time=1.0).median


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root", default="../shared/datasets/cifar10", help="ImageFolder with train/<class>/ (default: %(default)s)"
    )
    parser.add_argument("--images", type=int, default=0, help="images per epoch (default: 2048 on CPU, 50000 on CUDA)")
    for option, default in (("--batch-size", 128), ("--img-size", 32), ("--patch-size", 4), ("--depth", 12)):
        parser.add_argument(option, type=int, default=default)
    parser.add_argument("--embed-dim", type=int, default=192)
    parser.add_argument("--heads", dest="num_heads", metavar="HEADS", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain loop")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (every side)")
    augment = "light: pad-and-crop and flip; full: --params' finetune recipe; both (default: %(default)s)"
    parser.add_argument("--augment", choices=["light", "full", "both"], default="light", help=augment)
    parser.add_argument("--params", default="params.yaml", help="where --augment full reads the finetune recipe")


def peak_line(device_name: str, datasheet: float | None, measured: float) -> str:
    datasheet_text = f"{datasheet / 1e12:.1f} TFLOP/s" if datasheet else "not in DATASHEET_BF16_PEAK"
    return (
        f"bf16 peak of {device_name}: datasheet {datasheet_text}; measured 8192^3 matmul {measured / 1e12:.1f} TFLOP/s"
    )


def rate_line(label: str, rate: float, flops: float, peaks: dict) -> str:
    """`label: N img/s`, then its TFLOP/s and, on CUDA, its share of each peak."""
    achieved = rate * flops
    shares = "".join(f", {achieved / peak:.1%} of the {name} bf16 peak" for name, peak in peaks.items() if peak)
    return f"{label + ':':<48} {rate:10.1f} img/s  ({achieved / 1e12:.3g} TFLOP/s{shares})"


def run(args) -> int:
    runtime = RuntimeConfig(device=args.device, compile=args.compile)
    device = resolve_device(runtime)
    amp_dtype = autocast_dtype(runtime, device)
    per_class = -(-(args.images or (50000 if device.type == "cuda" else 2048)) // 10)
    data_cfg = DataConfig(name="imagefolder", root=args.root, train_per_class=per_class, num_workers=4)
    data = load_split(data_cfg, "train", args.img_size)
    model_cfg = ModelConfig(**{field: getattr(args, field) for field in MODEL_SIZES}, drop_path_rate=0.0)
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
    print(
        f"training ViT (depth {args.depth}, dim {args.embed_dim}, patch {args.patch_size}) at {args.img_size}px, "
        f"batch {args.batch_size}, {len(data)} images/epoch, {device.type} {precision}"
        f"{', compiled' if args.compile else ''}",
        flush=True,
    )
    flops = train_flops_per_image(model_cfg, data.num_classes)
    print(f"training FLOPs per image (forward + backward, FlopCounterMode): {flops / 1e9:.4g} GFLOP", flush=True)
    peaks = {}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        datasheet = next((peak for card, peak in DATASHEET_BF16_PEAK.items() if card in name), None)
        peaks = {"datasheet": datasheet, "measured": matmul_peak(device)}
        print(peak_line(name, peaks["datasheet"], peaks["measured"]), flush=True)
    else:
        print("bf16 peak: not measured on cpu (the peak fractions are a CUDA figure)")

    def fresh_model():
        """A fresh model on the device in training mode, and what runs its forward (compiled with --compile)."""
        seed_everything(0)
        model = create_model(model_cfg, data.num_classes).to(device).train()
        return model, torch.compile(model) if args.compile else model

    bare = bare_step_images_per_s(*fresh_model(), data, args.batch_size, device, amp_dtype)
    print(rate_line("bare timm step (one batch on the device)", bare, flops, peaks), flush=True)
    for name in ("light", "full") if args.augment == "both" else (args.augment,):
        recipe = LIGHT if name == "light" else load_params(args.params).finetune
        cfg = recipe.model_copy(update={**TIMED, "batch_size": args.batch_size})
        engine = train(fresh_model()[0], data, cfg, runtime, seed=0, desc="engine")[-1]["train_images_per_s"]
        print(rate_line(f"synthvit engine, {name} augmentation", engine, flops, peaks), flush=True)
        plain = plain_loop_images_per_s(*fresh_model(), data, cfg, device, amp_dtype, args.workers)
        print(rate_line(f"plain DataLoader loop, {name} augmentation ({args.workers} workers)", plain, flops, peaks))
        print(f"ratio engine / plain, {name} augmentation: {engine / plain:10.2f}x")
        print(f"ratio engine / bare, {name} augmentation:  {engine / bare:10.2f}x", flush=True)
    return 0
