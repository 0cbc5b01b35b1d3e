"""Files: where the stages write (declared the same way in dvc.yaml), where relative paths
from params.yaml point, and atomic writes (a crashed stage never leaves a truncated output
that DVC would cache as valid)."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import psutil

from synthvit.errors import refused_errno

# The stages' outputs (dvc.yaml declares the same paths).
SYNTHETIC_DIR = Path("data/synthetic")


def checkpoint_path(stage: str) -> Path:
    return Path("models") / f"{stage}.pt"


def from_pipeline_pretraining(init, backbone=None) -> bool:
    """Whether a fine-tuning started from this pipeline's own pre-training (finetune.init pretrained, from
    models/pretrain.pt), not from a released backbone, scratch, mimetic or ImageNet weights: only then do the
    workspace's fractals, pre-training metrics and curves describe its starting point."""
    own = checkpoint_path("pretrain")
    backbone = backbone if isinstance(backbone, str) and backbone else own  # unrecorded (NaN, None): the default
    return str(init) == "pretrained" and Path(backbone) == own


def metrics_path(stage: str) -> Path:
    return Path("metrics") / f"{stage}.json"


def history_path(stage: str) -> Path:
    return Path("plots") / stage / "history.csv"


def timing_path(stage: str) -> Path:
    return Path("metrics/timing") / f"{stage}.json"


def temp_path(path: Path, kind: str = "tmp") -> Path:
    """Where `path` is written before it is renamed into place: `.NAME.tmp-PID` beside it."""
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


def remove_stale_temps(path: Path, kinds=("tmp",)) -> None:
    """Remove what writers of `path` that no longer run left beside it (`.NAME.tmp-PID`, a file or a
    folder): a process killed with SIGKILL (or by the OOM killer) runs no cleanup, and nothing else
    would ever remove its temporary file."""
    for kind in kinds:
        for stale in path.parent.glob(f".{glob.escape(path.name)}.{kind}-*"):
            pid = stale.name.rpartition("-")[2]
            if not pid.isdigit() or int(pid) == os.getpid() or psutil.pid_exists(int(pid)):
                continue
            with contextlib.suppress(OSError):  # another run removing it at the same time, or a read-only folder
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale)
                else:
                    stale.unlink()


def atomic_write(path: Path, write) -> Path:
    """Call write(tmp) on a temporary file beside `path`, then rename it into place.

    A write the machine refuses (a full disk, a read-only folder or no permission; also
    torch.save's RuntimeError for them, see errors.refused_errno) is raised as an OSError
    with that errno naming `path`, not the temporary file: `run_main` then prints one line
    naming the output, and the temporary file is gone.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        code = refused_errno(exc)
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(path)) from exc
    finally:
        with contextlib.suppress(OSError):  # nothing to remove, or a folder we cannot write
            tmp.unlink(missing_ok=True)
    return path


# Text outputs keep file names that are not valid UTF-8 (Linux allows any bytes but "/" and NUL):
# Python holds their undecodable bytes as lone surrogates (os.fsdecode), and "surrogateescape"
# writes back the original bytes, so a path read from the file (with the same error handler,
# `read_csv`) opens the same file. "strict" would fail the whole stage on one odd name, and
# "backslashreplace" would write a name that no longer opens anything.
PATH_ERRORS = "surrogateescape"


def write_json(path: Path, data) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, errors=PATH_ERRORS))


def write_csv(path: Path, frame: pd.DataFrame) -> Path:
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, errors=PATH_ERRORS))


# Columns that hold names: class names (folder names such as `0`..`9`, `007` beside `7`, `None`) and
# file names. pandas would read such a name back as a number or a missing value.
NAME_COLUMNS = ("class", "actual", "predicted", "path")


def read_csv(path: Path, text_columns=()) -> pd.DataFrame:
    """A CSV that `write_csv` wrote. Name columns (NAME_COLUMNS) and `text_columns` come back exactly as
    written, as Python strings (file names included, see PATH_ERRORS; pandas' default Arrow strings cannot
    hold them); only an empty field, what write_csv writes for None, is missing. Other columns as pandas reads them."""
    written = pd.read_csv(path, encoding_errors=PATH_ERRORS, dtype=object, keep_default_na=False, na_values=[""])
    # `synthvit predict`'s top1_class, ... are names too.
    text = [c for c in written.columns if c in NAME_COLUMNS or c.endswith("_class") or c in text_columns]
    # Two passes: pandas has no per-column switch for the words it reads as missing ("None", "NA", "nan").
    frame = pd.read_csv(path, encoding_errors=PATH_ERRORS, dtype=dict.fromkeys(text, object))
    frame[text] = written[text]
    return frame


def text_frame(data: dict | list[dict]) -> pd.DataFrame:
    """A DataFrame (from {column: values} or a list of row dicts) whose text columns may hold file
    names with undecodable bytes: pandas' default string dtype (Arrow) refuses the lone surrogates
    that stand for them, so columns holding text stay Python objects."""
    if isinstance(data, list):
        names = dict.fromkeys(name for row in data for name in row)
        data = {name: [row.get(name) for row in data] for name in names}
    columns = {
        name: pd.Series(values, dtype=object)
        if isinstance(values, list | tuple) and any(isinstance(v, str) for v in values)
        else values  # numbers (arrays keep their dtype, so the CSV's digits do not change)
        for name, values in data.items()
    }
    return pd.DataFrame(columns)


def repo_root() -> Path:
    """The repository: DVC_ROOT, which DVC points at the real repository even in a queued
    experiment (a temporary copy, deleted afterwards, without the untracked data folders);
    else the nearest folder up holding .dvc/ or dvc.yaml; else the working directory."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / ".dvc").is_dir() or (folder / "dvc.yaml").is_file():
            return folder
    return here


def user_path(path: str) -> Path:
    """A path from params.yaml: relative ones are relative to the repository root (stages run
    there; a queued experiment runs in a copy, and DVC_ROOT names the real repository)."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or not os.environ.get("DVC_ROOT"):
        return candidate  # as the user wrote it, for messages
    return repo_root() / candidate
