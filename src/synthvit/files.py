"""Atomic file writes: a crashed stage never leaves a truncated output that looks valid."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd


def _replace_from_tmp(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: Path, data) -> Path:
    return _replace_from_tmp(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def write_csv(path: Path, frame: pd.DataFrame) -> Path:
    return _replace_from_tmp(path, lambda tmp: frame.to_csv(tmp, index=False))
