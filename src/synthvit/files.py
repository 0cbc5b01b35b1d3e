"""File helpers: atomic writes (a crashed stage never leaves a truncated output that looks
valid) and where relative paths from params.yaml point."""

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


def write_text(path: Path, text: str) -> Path:
    return _replace_from_tmp(path, lambda tmp: tmp.write_text(text))


def write_csv(path: Path, frame: pd.DataFrame) -> Path:
    return _replace_from_tmp(path, lambda tmp: frame.to_csv(tmp, index=False))


def user_path(path: str) -> Path:
    """A path from params.yaml. Relative ones are relative to the repository root, also in a
    queued experiment, which runs in a temporary copy without the untracked data folders
    (DVC sets DVC_ROOT to the real repository there)."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or not os.environ.get("DVC_ROOT"):
        return candidate
    return Path(os.environ["DVC_ROOT"]) / candidate
