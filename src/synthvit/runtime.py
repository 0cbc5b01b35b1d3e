"""How a process runs here: its device and precision, threads, seeds and determinism, and
how it shows progress (a bar on a terminal, plain timestamped lines in CI logs and DVC queues)."""

from __future__ import annotations

import os
import random
import sys
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from synthvit.config import RuntimeConfig
from synthvit.errors import ConfigError


def seed_everything(seed: int) -> None:
    """Seed every generator training draws from (timm's Mixup uses numpy, random erasing `random`)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(runtime: RuntimeConfig) -> torch.device:
    """runtime.device as a torch device (under torchrun, this process's GPU); sets the CPU threads."""
    if runtime.num_threads:
        torch.set_num_threads(runtime.num_threads)
    if runtime.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("runtime.device", "cuda", "no CUDA device is visible; use auto or cpu")
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
    """bf16 autocast on CUDA by default; fp32 on CPU, whose bf16 is emulated and ~20x slower without AMX."""
    precision = runtime.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def progress_bar(iterable=None, **kwargs):
    """A tqdm bar that stays silent when stderr is not a terminal (tqdm's own `disable=None`).

    A disabled bar does not count: never drive periodic work off `bar.n`.
    """
    return tqdm(iterable, disable=None, leave=False, dynamic_ncols=True, **kwargs)


def log(message: str) -> None:
    """One timestamped line on stderr; safe to call while a bar is drawn."""
    tqdm.write(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr)
