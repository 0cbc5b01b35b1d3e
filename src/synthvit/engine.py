"""The training and inference loops: plain functions over uint8 image batches.

`train` = `set_up` (device, processes, optimizer, schedule, EMA, loss scaler, augmentation,
generators: one `Loop`), then `train_one_epoch` per epoch, then `keep_final_weights` (the
one place that decides which weights the model ends with).

One step: take a batch (sliced from the in-memory tensor, or decoded by DataLoader workers
when streamed), augment it on the device (RandAugment/TrivialAugment, crop/flip,
Mixup/CutMix, random erasing), forward under autocast, step the optimizer (through the
fp16 loss scaler), the EMA and the per-step cosine schedule. The step never reads a value
back from the device: the loss is summed there and read every LOG_EVERY steps and at the
end of the epoch. Nothing here knows about DVC or MLflow; callers get per-epoch metrics
through `on_epoch`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from timm.data import Mixup
from timm.data.random_erasing import RandomErasing
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from synthvit import distributed
from synthvit.augment import auto_augment, auto_augment_policy, random_resized_crop_flip, to_float
from synthvit.config import RuntimeConfig, TrainConfig
from synthvit.data import ImageSet, StreamedImages
from synthvit.errors import UserError
from synthvit.models import DEFAULT_MEAN, DEFAULT_STD
from synthvit.progress import log, progress_bar
from synthvit.resume import cpu_copy, read_state, restore_state, save_state

LOG_EVERY = 50  # steps between reads of the running loss: its finiteness check and the progress figure


def seed_everything(seed: int) -> None:
    """Seed every generator the loop draws from (timm's Mixup uses numpy, erasing uses random)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(runtime: RuntimeConfig) -> torch.device:
    if runtime.num_threads:
        torch.set_num_threads(runtime.num_threads)
    if runtime.device == "cuda" and not torch.cuda.is_available():
        raise UserError("params.yaml: runtime.device='cuda' is invalid: no CUDA device is visible; use auto or cpu")
    if runtime.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def set_deterministic(enabled: bool) -> None:
    """Bit-reproducible kernels (slower on GPU); CPU training here is deterministic either way."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=False)
    torch.backends.cudnn.benchmark = not enabled


def autocast_dtype(runtime: RuntimeConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA by default; fp32 on CPU, whose bf16 is emulated and ~20x slower here."""
    precision = runtime.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def steps_per_epoch(num_images: int, batch_size: int) -> tuple[int, int]:
    """(steps, batch) with drop-last batches; the batch shrinks (to an even size) for tiny datasets."""
    batch = min(batch_size, num_images - num_images % 2)
    if batch < 2:
        raise UserError(f"the training set has {num_images} image(s); at least 2 are needed")
    return num_images // batch, batch


def uint8_batches(train_set: ImageSet, order: torch.Tensor, starts: list[int], size: int, device: torch.device,
                  num_workers: int, epoch: int = 1):
    """(uint8 images on the device, their indices) for each batch `order[start:start + size]`, in order.

    In memory: one gather per batch from the tensor (already on the device). Streamed: a
    DataLoader decodes the same batches in worker processes (or renders them, for a set
    with a `source`: its images of `epoch`; on CUDA the GPU renders them, the workers only
    draw their random numbers), so both paths see the same images in the same order.
    """
    if not train_set.streamed:
        for start in starts:
            idx = order[start : start + size]
            yield train_set.images[idx], idx
        return
    on_host = order.tolist()  # the sampler needs host indices: one copy per epoch
    if train_set.source is not None and device.type == "cuda":
        # Rendered on the GPU with torch (synthetic_set.RenderedImages.device_batches): CPU workers would starve it.
        batches = [on_host[start : start + size] for start in starts]
        rendered = train_set.source.for_epoch(epoch).device_batches(batches, device, num_workers)
        for images, start in zip(rendered, starts):
            yield images, order[start : start + size]
        return
    # Its own generator: a DataLoader seeds its workers from the global one otherwise, which
    # would shift the augmentation draws (decoding itself draws nothing).
    dataset = train_set.source.for_epoch(epoch) if train_set.source is not None else StreamedImages(train_set)
    if train_set.source is not None and device.type == "cpu":
        # Rendering workers compete with torch's threads for the cores: rendering in this process
        # cost 2% of pre-training img/s on 2 cores, 1-4 workers 24-34% (README "Synthetic data").
        num_workers = 0
    loader = DataLoader(dataset, batch_sampler=[on_host[start : start + size] for start in starts],
                        num_workers=num_workers, pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0))
    for (images, _), start in zip(loader, starts):
        yield images.to(device, non_blocking=True), order[start : start + size]


def build_mixup(cfg: TrainConfig, num_classes: int) -> Mixup | None:
    """timm's Mixup/CutMix (one of the two per batch when both are on), with label smoothing folded
    into its soft targets; None when both are off."""
    if cfg.mixup_alpha <= 0 and cfg.cutmix_alpha <= 0:
        return None
    return Mixup(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, label_smoothing=cfg.label_smoothing,
                 num_classes=num_classes)


def build_schedule(optimizer, cfg: TrainConfig, total_steps: int, steps_each_epoch: int) -> CosineLRScheduler:
    """Per-step cosine decay to min_lr after a linear warmup (timm's scheduler)."""
    return CosineLRScheduler(
        optimizer,
        t_initial=total_steps,
        lr_min=cfg.min_lr,
        warmup_t=round(cfg.warmup_epochs * steps_each_epoch),
        warmup_lr_init=cfg.min_lr,
        warmup_prefix=False,
        t_in_epochs=False,
    )


@dataclasses.dataclass
class Loop:
    """What `set_up` builds once and every epoch uses."""

    cfg: TrainConfig
    desc: str
    device: torch.device
    amp_dtype: torch.dtype | None
    model: nn.Module  # the raw weights, trained in place
    forward: nn.Module  # the model as called in the step: wrapped by DDP and/or torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    scaler: torch.amp.GradScaler  # fp16 only; a pass-through otherwise
    ema: ModelEmaV3 | None
    mixup: Mixup | None
    criterion: nn.Module
    policy: object  # torchvision auto-augment policy, or None
    erasing: RandomErasing | None
    generators: dict[str, torch.Generator]  # "order" (same on every process), "augment" (per process)
    train_set: ImageSet
    labels: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    steps: int  # optimizer steps per epoch
    batch_size: int  # global batch, over all processes
    num_workers: int

    @property
    def scored(self) -> nn.Module:
        """The weights that are evaluated, kept and saved: the EMA's when it is on, else the raw ones."""
        return self.ema.module if self.ema is not None else self.model


def set_up(model: nn.Module, train_set: ImageSet, cfg: TrainConfig, runtime: RuntimeConfig, seed: int,
           desc: str, num_workers: int) -> Loop:
    """Device, processes, optimizer, schedule, EMA, loss scaler, augmentation and generators for one run."""
    seed_everything(seed)
    device = resolve_device(runtime)
    distributed.setup(device.type)
    world, rank = distributed.world_size(), distributed.rank()
    set_deterministic(runtime.deterministic)
    amp_dtype = autocast_dtype(runtime, device)
    model.to(device)
    if not train_set.streamed:  # decoded once; moved to the device once
        train_set = dataclasses.replace(train_set, images=train_set.images.to(device))
    steps, batch_size = steps_per_epoch(len(train_set), cfg.batch_size)
    if batch_size % world:
        raise UserError(f"params.yaml: {desc}.batch_size={batch_size} is invalid: must divide evenly over {world} processes")
    forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
    forward = torch.compile(forward) if runtime.compile else forward
    # Fused: the step count lives on the device (a plain torch AdamW reads it back per step), and
    # the fp16 scaler's overflow check stays there too (skipping a step costs no host sync).
    optimizer = create_optimizer_v2(model, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                                    layer_decay=cfg.layer_decay or None, fused=True)
    mixup = build_mixup(cfg, train_set.num_classes)
    return Loop(
        cfg=cfg, desc=desc, device=device, amp_dtype=amp_dtype, model=model, forward=forward, optimizer=optimizer,
        scheduler=build_schedule(optimizer, cfg, cfg.epochs * steps, steps),
        scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16),  # fp16 underflows unscaled
        ema=ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay > 0 else None,
        mixup=mixup,
        criterion=SoftTargetCrossEntropy() if mixup is not None else nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
        policy=auto_augment_policy(cfg.auto_augment, cfg.auto_augment_magnitude),
        erasing=RandomErasing(cfg.random_erasing, mode="pixel", device=device) if cfg.random_erasing > 0 else None,
        # One order for all processes; each process its own augmentation draws.
        generators={"order": torch.Generator(device=device).manual_seed(seed),
                    "augment": torch.Generator(device=device).manual_seed(seed + 1 + rank)},
        train_set=train_set, labels=train_set.labels.to(device),
        mean=torch.tensor(DEFAULT_MEAN, device=device), std=torch.tensor(DEFAULT_STD, device=device),
        steps=steps, batch_size=batch_size, num_workers=num_workers,
    )


def check_finite(loss_sum: torch.Tensor, count: int, where: str) -> float:
    """The mean loss so far, read from the device (a host sync: only every LOG_EVERY steps)."""
    mean = loss_sum.item() / count
    if not math.isfinite(mean):
        raise UserError(f"training diverged: the loss is {mean} {where}; lower the lr or enable grad_clip")
    return mean


def train_one_epoch(loop: Loop, epoch: int) -> dict:
    """One pass over the training set; the step reads nothing back from the device."""
    cfg, device = loop.cfg, loop.device
    world, rank = distributed.world_size(), distributed.rank()
    per_rank = loop.batch_size // world  # each process takes its slice of every global batch
    loop.model.train()
    started = time.perf_counter()
    order = torch.randperm(len(loop.train_set), generator=loop.generators["order"], device=device)
    starts = [i * loop.batch_size + rank * per_rank for i in range(loop.steps)]
    loss_sum = torch.zeros((), device=device)  # summed on the device, read every LOG_EVERY steps
    correct = torch.zeros((), device=device, dtype=torch.long)
    bar = progress_bar(uint8_batches(loop.train_set, order, starts, per_rank, device, loop.num_workers, epoch), total=loop.steps,
                       desc=f"{loop.desc} epoch {epoch}/{cfg.epochs}", unit="batch")
    for i, (batch, idx) in enumerate(bar):
        step = (epoch - 1) * loop.steps + i + 1  # the global step: optimizer steps taken once this one is done
        x = to_float(auto_augment(batch, loop.policy), loop.mean, loop.std)
        y = loop.labels[idx]
        x = random_resized_crop_flip(x, cfg.crop_scale, padding=cfg.crop_padding, hflip=cfg.hflip,
                                     generator=loop.generators["augment"])
        target = y
        if loop.mixup is not None:
            x, target = loop.mixup(x, y)
        if loop.erasing is not None:
            x = loop.erasing(x)
        with autocast(device, loop.amp_dtype):
            logits = loop.forward(x)
            loss = loop.criterion(logits, target)
        loop.optimizer.zero_grad(set_to_none=True)
        loop.scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            loop.scaler.unscale_(loop.optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(loop.model.parameters(), cfg.grad_clip)
        loop.scaler.step(loop.optimizer)
        loop.scaler.update()
        if loop.ema is not None:
            loop.ema.update(loop.model, step=step)
        loop.scheduler.step_update(step)
        loss_sum += loss.detach()
        correct += (logits.argmax(1) == y).sum()
        if (i + 1) % LOG_EVERY == 0:
            bar.set_postfix(loss=f"{check_finite(loss_sum, i + 1, f'in epoch {epoch} by step {i + 1}'):.3f}")
    distributed.all_reduce_sum(loss_sum)
    distributed.all_reduce_sum(correct)
    seconds = time.perf_counter() - started
    seen = loop.steps * loop.batch_size
    return {
        "epoch": epoch,
        "train_loss": check_finite(loss_sum, loop.steps * world, f"in epoch {epoch}"),
        "train_acc": correct.item() / seen,
        "lr": loop.optimizer.param_groups[0]["lr"],
        "epoch_seconds": seconds,
        "train_images_per_s": seen / seconds,
    }


def keep_final_weights(loop: Loop, history: list[dict], best: dict) -> None:
    """The one place that decides the weights training ends with, and marks their epoch `selected`:
    the best validation epoch's when `best` holds one (keep_best), else the last epoch's;
    either way the EMA's weights when EMA is on (`Loop.scored`)."""
    if best["state"]:
        loop.model.load_state_dict(best["state"])
    elif loop.ema is not None:
        loop.model.load_state_dict(loop.ema.module.state_dict())
    selected = best["epoch"] if best["state"] else history[-1]["epoch"]
    for metrics in history:
        metrics["selected"] = int(metrics["epoch"] == selected)


def train(
    model: nn.Module,
    train_set: ImageSet,
    cfg: TrainConfig,
    runtime: RuntimeConfig,
    seed: int,
    *,
    eval_set: ImageSet | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    desc: str = "train",
    resume_file: Path | None = None,
    keep_best: bool = False,
    num_workers: int = 2,
) -> list[dict]:
    """Train in place; returns one dict of metrics per epoch, the kept epoch marked `selected`.

    Set-up, then `train_one_epoch` per epoch, then `keep_final_weights`.
    With `resume_file`, the full training state is saved there every
    `cfg.checkpoint_every` epochs, and a run that finds the file continues from it.
    With `keep_best`, the model ends with the weights of the epoch that scored best on
    `eval_set` (a validation split: the test set is for reporting only).
    A streamed `train_set` is decoded batch by batch by `num_workers` DataLoader workers.
    """
    loop = set_up(model, train_set, cfg, runtime, seed, desc, num_workers)
    main = distributed.is_main()
    history, first_epoch, best = [], 1, {"acc": -1.0, "epoch": 0, "state": {}}
    saved = read_state(resume_file)
    if saved is not None:
        done, history, best = restore_state(saved, loop)
        first_epoch = done + 1
        if main:
            log(f"{desc}: resuming after epoch {done} from {resume_file}")
    for epoch in range(first_epoch, cfg.epochs + 1):
        metrics = train_one_epoch(loop, epoch)
        if eval_set is not None:
            metrics.update(evaluate_loss_acc(loop.scored, eval_set, loop.device, loop.amp_dtype,
                                             batch_size=max(loop.batch_size, 256)))
            if keep_best and metrics["eval_acc"] > best["acc"]:
                best = {"acc": metrics["eval_acc"], "epoch": epoch, "state": cpu_copy(loop.scored.state_dict())}
        history.append(metrics)
        if main:
            log(f"{desc} epoch {epoch}/{cfg.epochs} " + " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "epoch"))
            if on_epoch is not None:
                on_epoch(metrics)
        if resume_file is not None and cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0 and epoch < cfg.epochs:
            save_state(resume_file, epoch, loop, history, best)
    keep_final_weights(loop, history, best)
    if resume_file is not None and main:
        resume_file.unlink(missing_ok=True)
    return history


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    batch_size: int = 512,
    mean=DEFAULT_MEAN,
    std=DEFAULT_STD,
    desc: str = "predict",
) -> torch.Tensor:
    """Float32 logits on the CPU for a uint8 N x 3 x H x W tensor."""
    model.eval().to(device)
    outputs = []
    for start in progress_bar(range(0, len(images), batch_size), desc=desc, unit="batch"):
        x = to_float(images[start : start + batch_size].to(device), mean, std)
        with autocast(device, amp_dtype):
            outputs.append(model(x).float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0)


def class_probabilities(model: nn.Module, images: torch.Tensor, device: torch.device, amp_dtype=None,
                        batch_size: int = 512, mean=None, std=None, tta_flip: bool = False,
                        desc: str = "predict") -> torch.Tensor:
    """Softmax probabilities (N x classes, float32) for uint8 N x 3 x S x S images.

    With tta_flip the probabilities of each image and its horizontal mirror are averaged.
    The evaluate stage and `synthvit predict` both call this, so their numbers agree.
    """
    kwargs = {k: v for k, v in (("mean", mean), ("std", std)) if v is not None}
    probs = predict_logits(model, images, device, amp_dtype, batch_size, desc=desc, **kwargs).softmax(1)
    if tta_flip and len(images):
        flipped = predict_logits(model, images.flip(-1), device, amp_dtype, batch_size, desc=f"{desc} flipped", **kwargs)
        probs = (probs + flipped.softmax(1)) / 2
    return probs


def evaluate_loss_acc(model, eval_set: ImageSet, device, amp_dtype, batch_size: int = 512) -> dict:
    """Loss and top-1 on a held-out set, for the per-epoch curves (each process scores its share)."""
    world, rank = distributed.world_size(), distributed.rank()
    logits = predict_logits(model, eval_set.images[rank::world], device, amp_dtype, batch_size, desc="eval")
    labels = eval_set.labels[rank::world]
    sums = torch.tensor([nn.functional.cross_entropy(logits, labels, reduction="sum").item(),
                         (logits.argmax(1) == labels).sum().item()], dtype=torch.float64, device=device)
    loss_sum, correct = distributed.all_reduce_sum(sums).tolist()
    loss = loss_sum / len(eval_set)
    return {"eval_loss": loss if math.isfinite(loss) else float("nan"), "eval_acc": correct / len(eval_set)}
