"""`synthvit predict`: classify image files with a fine-tuned checkpoint or a registered MLflow model.

    synthvit predict IMAGE|DIR|GLOB... [--model models/finetune.pt | models:/NAME@ALIAS]
                     [--top-k K] [--json] [--output table.csv|table.json] [--tta-flip]

One line per image on stdout (class and confidence; JSON lines with --json). A folder is
searched recursively; --output also writes the whole table. A file that cannot be read
as an image gets its own message and the rest go on; the exit code is 0 when every
file was classified, 1 when any failed, 2 for a usage error (e.g. a bad --model).

Images go through the same decoding (`data.images.decode_image`) and inference
(`evaluation.inference`) as the evaluate stage, so the classes and confidences match it.
"""

from __future__ import annotations

import argparse
import codecs
import glob
import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from torch import nn

from synthvit.config import DEVICES, PRECISIONS, RuntimeConfig
from synthvit.data.images import decode_image
from synthvit.errors import UserError
from synthvit.evaluation.inference import class_probabilities
from synthvit.files import text_frame, write_csv, write_json
from synthvit.models import load_checkpoint, model_from_checkpoint
from synthvit.runtime import autocast_dtype, resolve_device
from synthvit.tracking import health
from synthvit.tracking.store import use_store

DEFAULT_MODEL = "models/finetune.pt"
MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
GLOB_CHARS = set("*?[")
CHUNK = 1024  # images decoded and classified at a time: bounds memory on big folders


# ---- the model ----------------------------------------------------------------------


@dataclass
class LoadedModel:
    model: nn.Module
    checkpoint: dict
    source: str  # what --model named, for messages

    @property
    def classes(self) -> list[str]:
        return list(self.checkpoint["classes"])

    @property
    def img_size(self) -> int:
        return int(self.checkpoint["model_config"]["img_size"])

    @property
    def mean(self):
        return self.checkpoint["mean"]

    @property
    def std(self):
        return self.checkpoint["std"]


def is_mlflow_uri(spec: str) -> bool:
    return spec.startswith(MLFLOW_SCHEMES)


def load_model(spec: str) -> LoadedModel:
    """A checkpoint path, or an MLflow model URI whose model carries the synthvit checkpoint."""
    checkpoint = checkpoint_from_mlflow(spec) if is_mlflow_uri(spec) else load_checkpoint(Path(spec))
    model = model_from_checkpoint(checkpoint).eval()
    return LoadedModel(model=model, checkpoint=checkpoint, source=spec)


def checkpoint_from_mlflow(uri: str) -> dict:
    """Download a logged model (e.g. `models:/synthvit-vit@current`) and load the checkpoint bundled in it.

    Only the checkpoint (plain tensors, loaded with weights_only=True) is read: the pickled
    nn.Module beside it is code, and is never unpickled here.
    """
    store = use_store(
        create=False,
        missing=(
            f"cannot load {uri}; run the pipeline (the finetune stage registers the model), "
            "set MLFLOW_TRACKING_URI to your server, or pass --model a checkpoint file"
        ),
    )
    health.check_tracking_store(store)  # a server that is down or refuses the login: one line, in seconds
    health.shorten_http_retries()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep stderr to one line per problem
    with tempfile.TemporaryDirectory(prefix="synthvit-model-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        except MlflowException as exc:
            raise UserError(f"cannot load {uri} from the MLflow store {store}: {exc.message}") from None
        found = sorted(local.glob("extra_files/*.pt")) or sorted(local.rglob("*.pt"))
        if not found:
            raise UserError(
                f"{uri} holds no synthvit checkpoint (expected extra_files/*.pt); was it logged by the finetune stage?"
            )
        return load_checkpoint(found[0])


@torch.no_grad()
def top_k(probs: torch.Tensor, classes: list[str], k: int) -> list[list[tuple[str, float]]]:
    values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
    return [
        [(classes[i], float(v)) for v, i in zip(row_v, row_i)]
        for row_v, row_i in zip(values.tolist(), indices.tolist())
    ]


# ---- the inputs ---------------------------------------------------------------------


def expand_inputs(specs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files named by each IMAGE, DIR (recursively) or GLOB, in order, without repeats; and (spec, error)
    for those that name none."""
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                problems.append((spec, "folder holds no files"))
        elif path.is_file():
            found = [path]
        elif GLOB_CHARS & set(spec):
            found = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
            if not found:
                problems.append((spec, "pattern matches no files"))
        else:
            found = []
            problems.append((spec, "no such file or folder"))
        files += found
    unique = list(dict.fromkeys(files))
    return unique, problems


def decode(path: Path, img_size: int) -> np.ndarray | str:
    """The image as the evaluate stage decodes it, or a one-line reason it could not be read."""
    try:
        return decode_image(path, img_size)
    except UserError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken files (e.g. decompression bombs)
        return f"cannot read image {path}: {type(exc).__name__}: {exc}"


def predict_files(
    loaded: LoadedModel,
    files: list[Path],
    k: int,
    device: torch.device,
    amp_dtype=None,
    batch_size: int = 256,
    tta_flip: bool = False,
    workers: int = 2,
):
    """Yield one result dict per file, in order: path, class, confidence, top_k; or path, error."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, len(files), CHUNK):
            chunk = files[start : start + CHUNK]
            decoded = list(pool.map(lambda p: decode(p, loaded.img_size), chunk))
            good = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
            ranked = []
            if good:
                images = torch.from_numpy(np.stack([decoded[i] for i in good])).permute(0, 3, 1, 2).contiguous()
                probs = class_probabilities(
                    loaded.model, images, device, amp_dtype, batch_size, loaded.mean, loaded.std, tta_flip
                )
                ranked = top_k(probs, loaded.classes, k)
            by_index = dict(zip(good, ranked))
            for i, path in enumerate(chunk):
                if i in by_index:
                    best = by_index[i]
                    yield {
                        "path": str(path),
                        "class": best[0][0],
                        "confidence": best[0][1],
                        "top_k": [{"class": c, "confidence": p} for c, p in best],
                    }
                else:
                    yield {"path": str(path), "error": decoded[i]}


# ---- output -------------------------------------------------------------------------


def text_line(result: dict) -> str:
    line = f"{result['path']}: {result['class']} {result['confidence']:.4f}"
    rest = result["top_k"][1:]
    if rest:
        line += " (" + ", ".join(f"{r['class']} {r['confidence']:.4f}" for r in rest) + ")"
    return line


def table_rows(results: list[dict], k: int) -> list[dict]:
    rows = []
    for result in results:
        row = {
            "path": result["path"],
            "class": result.get("class", ""),
            "confidence": result.get("confidence"),
            "error": result.get("error", ""),
        }
        for rank in range(k):
            entry = result.get("top_k", [])[rank] if rank < len(result.get("top_k", [])) else {}
            row[f"top{rank + 1}_class"] = entry.get("class", "")
            row[f"top{rank + 1}_confidence"] = entry.get("confidence")
        rows.append(row)
    return rows


def write_table(path: Path, results: list[dict], k: int) -> None:
    """The whole table. A file name that is not UTF-8 keeps its bytes: in CSV as they are (files.PATH_ERRORS),
    in JSON as the \\udcXX escapes of its lone surrogates (json.loads and os.fsencode give the bytes back)."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        write_json(path, results)
    else:
        write_csv(path, text_frame(table_rows(results, k)))


def names_survive_stdout() -> None:
    """Per-image lines name their file even when the name is not valid UTF-8: its undecodable bytes are
    written back as they were (what `ls` and `find` print, so a pipe gets the real name), and a
    character the terminal's encoding lacks as a backslash escape; never an exception mid-output."""
    stream = sys.stdout
    if hasattr(stream, "reconfigure") and stream.errors != PATH_OUTPUT_ERRORS:
        stream.reconfigure(errors=PATH_OUTPUT_ERRORS)


def _path_output_errors(exc: UnicodeEncodeError):
    text = exc.object[exc.start : exc.end]
    if all("\udc80" <= c <= "\udcff" for c in text):  # bytes os.fsdecode could not decode
        try:
            return codecs.lookup_error("surrogateescape")(exc)
        except UnicodeEncodeError:  # an encoding with no such bytes (UTF-16): escape them instead
            pass
    return codecs.backslashreplace_errors(exc)


PATH_OUTPUT_ERRORS = "synthvit-paths"
codecs.register_error(PATH_OUTPUT_ERRORS, _path_output_errors)


# ---- the command --------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGE|DIR|GLOB",
        help="image files, folders (searched recursively) or quoted glob patterns",
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"checkpoint file, or an MLflow model URI such as models:/NAME@ALIAS (default {DEFAULT_MODEL})",
    )
    parser.add_argument("--top-k", type=int, default=1, help="also show the next K-1 classes (default 1)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    parser.add_argument("--output", type=Path, help="also write the whole table to this .csv or .json file")
    parser.add_argument(
        "--tta-flip", action="store_true", help="average with the mirrored image (as evaluate.tta_flip)"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="as runtime.precision: auto is bf16 autocast on CUDA, fp32 on CPU",
    )


def run(args) -> int:
    if args.top_k < 1:
        raise UserError(f"--top-k={args.top_k} is invalid: an integer >= 1")
    if args.batch_size < 1:
        raise UserError(f"--batch-size={args.batch_size} is invalid: an integer >= 1")
    if args.output is not None and args.output.suffix.lower() not in (".csv", ".json"):
        raise UserError(f"--output={str(args.output)!r} is invalid: name a .csv or .json file")
    names_survive_stdout()
    loaded = load_model(args.model)
    k = min(args.top_k, len(loaded.classes))
    files, problems = expand_inputs(args.inputs)
    runtime = RuntimeConfig(device=args.device, precision=args.precision)
    device = resolve_device(runtime)
    results, failed = [], 0

    def emit(result: dict) -> None:
        nonlocal failed
        results.append(result)
        if "error" in result:
            failed += 1
            reason = result["error"]
            print(
                f"error: {reason}" if result["path"] in reason else f"error: {result['path']}: {reason}",
                file=sys.stderr,
            )
            if args.json:
                print(json.dumps(result), flush=True)
        else:
            print(json.dumps(result) if args.json else text_line(result), flush=True)

    for spec, reason in problems:
        emit({"path": spec, "error": reason})
    for result in predict_files(
        loaded, files, k, device, autocast_dtype(runtime, device), args.batch_size, args.tta_flip
    ):
        emit(result)
    if args.output is not None:
        write_table(args.output, results, k)
    if failed:
        print(f"{failed} of {len(results)} input(s) could not be classified", file=sys.stderr)
    return 1 if failed else 0
