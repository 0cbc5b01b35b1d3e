"""Resumable training state: everything the loop needs to continue as if never stopped.

Saved at the end of every `checkpoint_every`-th epoch and of the last, atomically, to a
file keyed by a fingerprint of the stage's inputs (`training_fingerprint`: recipe, data,
starting weights), so a killed stage re-run with the same params picks up where it
stopped and a changed one starts afresh. It lives outside DVC's declared outputs (which
DVC deletes before a stage runs) and is removed only once the stage's outputs are written.
Under torchrun the main process writes and reads the file (other nodes need not see
it) and it holds each process's own generators.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from synthvit.config import Params, TrainConfig
from synthvit.data.images import ImageSet, tensor_digest
from synthvit.errors import torch_load_reason
from synthvit.files import atomic_write
from synthvit.runtime import log
from synthvit.training import distributed

RESUME_DIR = Path(".synthvit/resume")
STATE_FORMAT = 2  # part of the file name: a state saved by an older layout is never resumed


def training_fingerprint(
    model: nn.Module, train_set: ImageSet, train_cfg: TrainConfig, params: Params, seed: int
) -> dict:
    """What must match for a saved training state to be resumed: recipe, seed, data and starting weights."""
    return {
        "train": train_cfg.model_dump(),
        "model": params.model.model_dump(),
        "runtime": params.runtime.model_dump(exclude={"num_threads"}),
        "seed": seed,
        "data": train_set.digest,
        "initial_weights": tensor_digest(*model.state_dict().values()),
    }


def resume_path(stage: str, fingerprint: dict) -> Path:
    keyed = {**fingerprint, "state_format": STATE_FORMAT}
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return RESUME_DIR / f"{stage}-{digest}.pt"


def cpu_copy(state_dict: dict) -> dict:
    """A state dict's tensors copied to the CPU (detached): a snapshot later steps do not change."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}


def save_state(path: Path, epoch: int, loop, history: list, best: dict) -> None:
    """Everything training needs to continue after `epoch` as if never stopped: what changes as the loop
    (an engine.Loop; not imported, as engine imports this module) runs (weights, optimizer, schedule, EMA,
    scaler, generators). Every process calls this (it gathers their generators); the main process writes."""
    own = {
        "augment": loop.generators["augment"].get_state().cpu(),
        "cuda_rng": torch.cuda.get_rng_state(loop.device) if loop.device.type == "cuda" else torch.empty(0),
    }
    per_process = distributed.gather(own)
    if not distributed.is_main():
        return
    numpy_state = np.random.get_state()
    saved = {
        "epoch": epoch,
        "model": cpu_copy(loop.model.state_dict()),
        "optimizer": loop.optimizer.state_dict(),
        "scheduler": loop.scheduler.state_dict(),
        "scaler": loop.scaler.state_dict(),
        "ema": cpu_copy(loop.ema.module.state_dict()) if loop.ema is not None else {},
        "order": loop.generators["order"].get_state().cpu(),  # the same on every process
        "per_process": per_process,  # by rank: augmentation draws, CUDA generator (dropout, drop-path)
        "torch_rng": torch.get_rng_state(),
        # numpy and python generators drive timm's Mixup and RandomErasing.
        "numpy_rng": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "python_rng": random.getstate(),
        "history": history,
        "best": best,
    }
    atomic_write(path, lambda tmp: torch.save(saved, tmp))


def read_state(path: Path | None) -> dict | None:
    """The saved state, read by the main process and sent to all; None when there is none or it is damaged."""
    return distributed.from_main(lambda: load_intact_state(path))


def load_intact_state(path: Path | None) -> dict | None:
    """The state in `path`; one that does not load (cut short by a full disk, a foreign file) is
    removed with a warning, so training starts over instead of failing the stage."""
    if path is None or not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not {"epoch", "model", "optimizer", "scheduler", "history"} <= set(state):
            raise ValueError("not a synthvit resume state")
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with it, it cannot be resumed
        reason = str(exc) if isinstance(exc, ValueError) else torch_load_reason(exc)
        log(f"warning: resume state {path} is damaged ({reason}); removed it: training starts over")
        path.unlink()
        return None
    return state


def restore_state(saved: dict, loop) -> tuple[int, list, dict]:
    """Restore the training state of `loop` (an engine.Loop) in place; returns (last finished epoch, history so
    far, best epoch's record)."""
    loop.model.load_state_dict(saved["model"])
    loop.optimizer.load_state_dict(saved["optimizer"])
    loop.scheduler.load_state_dict(saved["scheduler"])
    loop.scaler.load_state_dict(saved["scaler"])
    if loop.ema is not None:
        loop.ema.module.load_state_dict(saved["ema"])
    own = saved["per_process"][distributed.rank()]
    loop.generators["order"].set_state(saved["order"])
    loop.generators["augment"].set_state(own["augment"])
    if loop.device.type == "cuda":
        torch.cuda.set_rng_state(own["cuda_rng"], loop.device)
    torch.set_rng_state(saved["torch_rng"])
    name, keys, *rest = saved["numpy_rng"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = saved["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    return saved["epoch"], saved["history"], saved["best"]
