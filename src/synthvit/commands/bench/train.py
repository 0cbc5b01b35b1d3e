"""`synthvit bench train`: training images/s of the engine against a plain DataLoader loop.

Both sides train the same timm model at the same batch size, resolution and precision
on the same images, with the same augmentation (pad-and-crop, horizontal flip):
- plain: torchvision ImageFolder-style dataset of PIL images, per-sample transforms,
  a DataLoader with worker processes, the usual `for x, y in loader` loop;
- engine: synthvit's in-memory uint8 tensor, batch augmentation on the device.
Each side runs a warm-up epoch, then a timed epoch; the figures come from one run, side
by side, and the ratio is what to compare across machines.
"""

from __future__ import annotations

import argparse
import time

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from synthvit.config import DataConfig, ModelConfig, RuntimeConfig, TrainConfig
from synthvit.data.images import TensorImages, load_split
from synthvit.models import DEFAULT_MEAN, DEFAULT_STD, create_model
from synthvit.runtime import autocast, autocast_dtype, resolve_device, seed_everything
from synthvit.training.engine import train


class PILDataset(Dataset):
    """What typical training code has: PIL images and per-sample torchvision transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def plain_loop_images_per_s(
    model, data: TensorImages, batch_size: int, img_size: int, device, amp_dtype, workers: int
) -> float:
    transform = transforms.Compose(
        [
            transforms.RandomCrop(img_size, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(DEFAULT_MEAN, DEFAULT_STD),
        ]
    )
    loader = DataLoader(
        PILDataset(data.images, data.labels, transform),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    seconds = 0.0
    for _ in range(2):  # the first epoch warms up workers, kernels and caches
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        seen = 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device, amp_dtype):
                loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    return seen / seconds


def engine_images_per_s(model, data: TensorImages, batch_size: int, runtime: RuntimeConfig) -> float:
    cfg = TrainConfig(
        epochs=2,
        batch_size=batch_size,
        lr=1e-3,
        warmup_epochs=0,
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
        random_erasing=0.0,
        crop_scale=[1.0, 1.0],
        crop_padding=4,
        hflip=0.5,
        checkpoint_every=0,
    )
    history = train(model, data, cfg, runtime, seed=0, desc="engine")
    return history[-1]["train_images_per_s"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root", default="../shared/datasets/cifar10", help="ImageFolder with train/<class>/ (default: %(default)s)"
    )
    parser.add_argument(
        "--images", type=int, default=0, help="training images per epoch (default: 2048 on CPU, 50000 on CUDA)"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--embed-dim", type=int, default=192)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain loop")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the engine's model")


def run(args) -> int:
    runtime = RuntimeConfig(device=args.device, compile=args.compile)
    device = resolve_device(runtime)
    amp_dtype = autocast_dtype(runtime, device)
    count = args.images or (50000 if device.type == "cuda" else 2048)
    per_class = -(-count // 10)
    data = load_split(
        DataConfig(name="imagefolder", root=args.root, train_per_class=per_class, num_workers=4), "train", args.img_size
    )
    model_cfg = ModelConfig(
        img_size=args.img_size,
        patch_size=args.patch_size,
        embed_dim=args.embed_dim,
        depth=args.depth,
        num_heads=args.heads,
        drop_path_rate=0.0,
    )
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
    print(
        f"training ViT (depth {args.depth}, dim {args.embed_dim}, patch {args.patch_size}) at {args.img_size}px, "
        f"batch {args.batch_size}, {len(data)} images/epoch, {device.type} {precision}"
    )
    seed_everything(0)
    plain = plain_loop_images_per_s(
        create_model(model_cfg, data.num_classes), data, args.batch_size, args.img_size, device, amp_dtype, args.workers
    )
    print(f"plain DataLoader loop ({args.workers} workers): {plain:10.1f} img/s")
    seed_everything(0)
    engine = engine_images_per_s(create_model(model_cfg, data.num_classes), data, args.batch_size, runtime)
    print(f"synthvit engine:                    {engine:10.1f} img/s")
    print(f"ratio engine / plain:               {engine / plain:10.2f}x")
    return 0
