"""Resumable training state: everything the loop needs to continue as if never stopped.

Saved at the end of every `checkpoint_every`-th epoch, atomically, to a file keyed by a
fingerprint of the stage's inputs, so a killed stage re-run with the same params picks
up where it stopped and a changed one starts afresh. It lives outside DVC's declared
outputs (which DVC deletes before a stage runs) and is removed once training finishes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from synthvit.models import unwrap

RESUME_DIR = Path(".synthvit/resume")


def resume_path(stage: str, fingerprint: dict) -> Path:
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return RESUME_DIR / f"{stage}-{digest}.pt"


def save_state(path: Path, epoch: int, model, optimizer, scheduler, generators: dict, history: list, ema=None,
               best: dict | None = None) -> None:
    numpy_state = np.random.get_state()
    state = {
        "epoch": epoch,
        "model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generators": {name: g.get_state().cpu() for name, g in generators.items()},
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # numpy and python generators drive timm's Mixup and RandomErasing.
        "numpy_rng": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "python_rng": random.getstate(),
        "history": history,
        "best": best or {},
        "ema": {k: v.detach().cpu() for k, v in ema.module.state_dict().items()} if ema is not None else {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path, model, optimizer, scheduler, generators: dict, ema=None, best: dict | None = None):
    """Restore in place; returns (last finished epoch, history so far, best epoch's record)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    for name, generator in generators.items():
        generator.set_state(state["generators"][name])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    name, keys, *rest = state["numpy_rng"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    if ema is not None:
        ema.module.load_state_dict(state["ema"])
    return state["epoch"], state["history"], state["best"] or best
