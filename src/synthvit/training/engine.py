"""The training loop: plain functions over uint8 image batches.

`train` = a `Loop` (device, processes, optimizer, schedule, EMA, loss scaler, augmentation,
generators), then `train_one_epoch` per epoch,
then `keep_final_weights` (the one place that decides which weights the model ends with).

One step: take a batch (`ImageSet.batches`: gathered from memory, decoded by workers or
rendered from formulas; the loop does not know which), augment it on the device
(`Augmentation`), forward under autocast, step the optimizer (through the fp16 loss
scaler), the EMA and the per-step cosine schedule. The step never reads a value back
from the device: the loss is summed there and read every LOG_EVERY steps and at the end
of the epoch. Nothing here knows about DVC or MLflow; callers get per-epoch metrics
through `on_epoch`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from synthvit.config import RuntimeConfig, TrainConfig
from synthvit.data.augment import Augmentation
from synthvit.data.images import ImageSet, TensorImages
from synthvit.errors import DISK_ERRORS, UserError, fix_for
from synthvit.evaluation.inference import predict_logits
from synthvit.runtime import (
    autocast,
    autocast_dtype,
    log,
    progress_bar,
    resolve_device,
    seed_everything,
    set_deterministic,
)
from synthvit.training import distributed
from synthvit.training.resume import cpu_copy, read_state, restore_state, save_state

LOG_EVERY = 50  # steps between reads of the running loss: its finiteness check and the progress figure


def steps_per_epoch(num_images: int, batch_size: int) -> tuple[int, int]:
    """(steps, batch) with drop-last batches; the batch shrinks (to an even size) for tiny datasets."""
    batch = min(batch_size, num_images - num_images % 2)
    if batch < 2:
        raise UserError(f"the training set has {num_images} image(s); at least 2 are needed")
    return num_images // batch, batch


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


class Loop:
    """What is built once for a run and every epoch uses: device, processes, optimizer, schedule, EMA,
    loss scaler, augmentation and generators. What changes as training runs (model, optimizer, scheduler,
    scaler, ema, generators) is what a resume file holds (resume.save_state)."""

    def __init__(
        self,
        model: nn.Module,
        train_set: ImageSet,
        cfg: TrainConfig,
        runtime: RuntimeConfig,
        seed: int,
        desc: str,
        num_workers: int,
    ):
        seed_everything(seed)
        self.cfg, self.desc, self.num_workers = cfg, desc, num_workers
        self.device = device = resolve_device(runtime)
        distributed.setup(device.type)
        world, rank = distributed.world_size(), distributed.rank()
        set_deterministic(runtime.deterministic)
        self.amp_dtype = autocast_dtype(runtime, device)
        model.to(device)
        self.train_set = train_set.on(device)  # an in-memory set moves to the device once
        self.labels = train_set.labels.to(device)
        self.steps, self.batch_size = steps_per_epoch(len(train_set), cfg.batch_size)  # the global batch
        if self.batch_size % world:
            raise UserError(
                f"params.yaml: {desc}.batch_size={self.batch_size} is invalid: "
                f"must divide evenly over {world} processes"
            )
        # The model as called in the step: wrapped by DDP and/or torch.compile.
        forward = model
        if world > 1:
            forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        self.forward = torch.compile(forward) if runtime.compile else forward
        # Fused: the step count lives on the device (a plain torch AdamW reads it back per step), and
        # the fp16 scaler's overflow check stays there too (skipping a step costs no host sync).
        self.optimizer = create_optimizer_v2(
            model,
            opt=cfg.optimizer,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            layer_decay=cfg.layer_decay or None,
            fused=True,
        )
        self.augmentation = Augmentation(cfg, train_set.num_classes, device)
        self.model = model  # the raw weights, trained in place
        self.scheduler = build_schedule(self.optimizer, cfg, cfg.epochs * self.steps, self.steps)
        # fp16 gradients underflow unscaled; a pass-through for other precisions.
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype is torch.float16)
        self.ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay > 0 else None
        # One order for all processes; each process its own augmentation draws.
        self.generators = {
            "order": torch.Generator(device=device).manual_seed(seed),
            "augment": torch.Generator(device=device).manual_seed(seed + 1 + rank),
        }
        self.criterion = (
            SoftTargetCrossEntropy()
            if self.augmentation.mixup is not None
            else nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        )

    @property
    def scored(self) -> nn.Module:
        """The weights that are evaluated, kept and saved: the EMA's when it is on, else the raw ones."""
        return self.ema.module if self.ema is not None else self.model


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
    batches = loop.train_set.batches(order, starts, per_rank, device, loop.num_workers, epoch)
    bar = progress_bar(batches, total=loop.steps, desc=f"{loop.desc} epoch {epoch}/{cfg.epochs}", unit="batch")
    for i, (batch, idx) in enumerate(bar):
        step = (epoch - 1) * loop.steps + i + 1  # the global step: optimizer steps taken once this one is done
        y = loop.labels[idx]
        x, target = loop.augmentation(batch, y, loop.generators["augment"])
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
    eval_set: TensorImages | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    desc: str = "train",
    resume_file: Path | None = None,
    keep_best: bool = False,
    num_workers: int = 2,
) -> list[dict]:
    """Train in place; returns one dict of metrics per epoch, the kept epoch marked `selected`.

    A `Loop`, then `train_one_epoch` per epoch, then `keep_final_weights`.
    With `resume_file`, the full training state is saved there every
    `cfg.checkpoint_every` epochs and after the last one, and a run that finds the file
    continues from it. The file stays: the caller removes it once the trained model is
    safely written (a full disk at that moment then loses nothing).
    With `keep_best`, the model ends with the weights of the epoch that scored best on
    `eval_set` (a validation split: the test set is for reporting only).
    `num_workers` DataLoader workers decode (or draw) a streamed set's batches.
    """
    loop = Loop(model, train_set, cfg, runtime, seed, desc, num_workers)
    main = distributed.is_main()
    history, best = [], {"acc": -1.0, "epoch": 0, "state": {}}
    saved_epoch = 0  # the last epoch whose state is on disk
    saved = read_state(resume_file)
    if saved is not None:
        saved_epoch, history, best = restore_state(saved, loop)
        if main:
            log(f"{desc}: resuming after epoch {saved_epoch} from {resume_file}")
    for epoch in range(saved_epoch + 1, cfg.epochs + 1):
        metrics = train_one_epoch(loop, epoch)
        if eval_set is not None:
            metrics.update(evaluate_loss_acc(loop, eval_set))
            if keep_best and metrics["eval_acc"] > best["acc"]:
                best = {"acc": metrics["eval_acc"], "epoch": epoch, "state": cpu_copy(loop.scored.state_dict())}
        history.append(metrics)
        if main:
            log(
                f"{desc} epoch {epoch}/{cfg.epochs} "
                + " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "epoch")
            )
            if on_epoch is not None:
                on_epoch(metrics)
        if resume_file and cfg.checkpoint_every and (epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs):
            try:
                save_state(resume_file, epoch, loop, history, best)
            except OSError as exc:  # a full disk or a read-only folder; the state saved before is intact
                if exc.errno not in DISK_ERRORS:
                    raise
                then = f"resumes after epoch {saved_epoch}" if saved_epoch else "trains from the start (no state saved)"
                raise UserError(
                    f"{desc} could not save its resume state after epoch {epoch} ({DISK_ERRORS[exc.errno]} writing "
                    f"{exc.filename}); {fix_for(exc.errno)}, then run `dvc repro` again: it {then}"
                ) from None
            saved_epoch = epoch
    keep_final_weights(loop, history, best)
    return history


def evaluate_loss_acc(loop: Loop, eval_set: TensorImages) -> dict:
    """Loss and top-1 of the scored weights on a held-out set, for the per-epoch curves (each process
    scores its share)."""
    world, rank = distributed.world_size(), distributed.rank()
    images, labels = eval_set.images[rank::world], eval_set.labels[rank::world]
    logits = predict_logits(loop.scored, images, loop.device, loop.amp_dtype, max(loop.batch_size, 256), desc="eval")
    loss_sum = nn.functional.cross_entropy(logits, labels, reduction="sum").item()
    correct = (logits.argmax(1) == labels).sum().item()
    sums = torch.tensor([loss_sum, correct], dtype=torch.float64, device=loop.device)
    loss_sum, correct = distributed.all_reduce_sum(sums).tolist()
    loss = loss_sum / len(eval_set)
    return {"eval_loss": loss if math.isfinite(loss) else float("nan"), "eval_acc": correct / len(eval_set)}
