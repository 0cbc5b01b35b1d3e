"""What a stage cost and where it ran: metrics/timing/<stage>.json, beside the stage's results.

Wall-clock figures change from run to run, so they stay out of the files other stages
depend on (checkpoints, histories, metrics): two runs of the same params then give
byte-identical results and re-run nothing downstream. The timing file is a declared,
cached output of its stage (restored with it), read by `synthvit compare` and
`synthvit results`; nothing depends on it. Bookkeeping: editing this module re-runs nothing.
`pipeline.stage_context` writes it when a stage ends.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from pathlib import Path

import psutil
import torch

from synthvit.files import timing_path, write_json


def cpu_model() -> str:
    """The CPU's marketing name ("AMD EPYC", "Intel(R) Xeon(R) Platinum 8488C"), as /proc/cpuinfo gives it."""
    with contextlib.suppress(OSError):  # not Linux
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine() -> dict:
    """The machine a figure was measured on: CPU, cores, torch threads, accelerator, library versions."""
    return {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": str(torch.__version__),  # a TorchVersion, which yaml.safe_dump refuses
        "python": platform.python_version(),
        "accelerator": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
    }


def write_timing(stage: str, **figures) -> Path:
    """metrics/timing/<stage>.json: wall seconds since the process started (the stage's whole cost, interpreter
    and imports included), the machine, and `figures`."""
    seconds = time.time() - psutil.Process().create_time()
    return write_json(
        timing_path(stage), {"stage": stage, "wall_seconds": round(seconds, 2), **figures, "machine": machine()}
    )
