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
import itertools
import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException

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


class LoadedModel:
    """A checkpoint path, or an MLflow model URI whose model carries the synthvit checkpoint, ready to classify."""

    def __init__(self, spec: str):
        checkpoint = checkpoint_from_mlflow(spec) if spec.startswith(MLFLOW_SCHEMES) else load_checkpoint(Path(spec))
        self.model = model_from_checkpoint(checkpoint).eval()
        self.source = spec  # what --model named, for messages
        self.name = checkpoint["model_config"]["name"]  # the timm architecture
        self.img_size = int(checkpoint["model_config"]["img_size"])
        self.classes = list(checkpoint["classes"])
        self.mean, self.std = checkpoint["mean"], checkpoint["std"]

    def top_k(self, images: torch.Tensor, k: int, device: torch.device, amp_dtype=None, batch_size=256, tta_flip=False):
        """The k most likely (class, probability) of each uint8 N x 3 x S x S image, most likely first."""
        probs = class_probabilities(self.model, images, device, amp_dtype, batch_size, self.mean, self.std, tta_flip)
        values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
        return [[(self.classes[i], p) for p, i in zip(*row)] for row in zip(values.tolist(), indices.tolist())]


load_model = LoadedModel


def as_batch(decoded: list[np.ndarray]) -> torch.Tensor:
    """uint8 N x 3 x S x S from decoded S x S x 3 images."""
    return torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).contiguous()


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


# ---- the inputs ---------------------------------------------------------------------


def expand_inputs(specs: list[str]) -> tuple[list[Path], list[dict]]:
    """Files named by each IMAGE, DIR (recursively) or GLOB, in order, without repeats; and a result
    {path, error} for each that names none."""
    files, problems = [], []
    for spec in specs:
        path = Path(spec)
        # A file or folder is taken by its name, whatever characters it holds; "**" skips hidden files and folders.
        pattern = spec
        if path.is_dir():
            pattern = os.path.join(glob.escape(spec), "**")
        elif path.exists():
            pattern = glob.escape(spec)
        found = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        files += found
        if not found:
            none = "pattern matches no files" if GLOB_CHARS & set(spec) else "no such file or folder"
            problems.append({"path": spec, "error": "folder holds no files" if path.is_dir() else none})
    return list(dict.fromkeys(files)), problems


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
):
    """Yield one result dict per file, in order: path, class, confidence, top_k; or path, error."""
    with ThreadPoolExecutor(2) as pool:  # PIL releases the GIL while decoding
        for start in range(0, len(files), CHUNK):
            chunk = files[start : start + CHUNK]
            decoded = list(pool.map(lambda p: decode(p, loaded.img_size), chunk))
            good = [image for image in decoded if not isinstance(image, str)]
            ranked = iter(loaded.top_k(as_batch(good), k, device, amp_dtype, batch_size, tta_flip) if good else [])
            for path, image in zip(chunk, decoded):
                if isinstance(image, str):
                    yield {"path": str(path), "error": image}
                    continue
                best = next(ranked)
                top = [{"class": name, "confidence": p} for name, p in best]
                yield {"path": str(path), "class": best[0][0], "confidence": best[0][1], "top_k": top}


# ---- output -------------------------------------------------------------------------


def text_line(result: dict) -> str:
    best, *rest = (f"{entry['class']} {entry['confidence']:.4f}" for entry in result["top_k"])
    return f"{result['path']}: {best}" + (f" ({', '.join(rest)})" if rest else "")


def table_rows(results: list[dict], k: int) -> list[dict]:
    """One row a result, its top-k spread over columns; a file name that is not UTF-8 keeps its bytes in CSV
    (files.PATH_ERRORS), in JSON as the \\udcXX escapes of its lone surrogates (json.loads and os.fsencode give
    the bytes back)."""
    rows = []
    for result in results:
        row = {
            "path": result["path"],
            "class": result.get("class", ""),
            "confidence": result.get("confidence"),
            "error": result.get("error", ""),
        }
        for rank, entry in enumerate(result.get("top_k") or [{}] * k, 1):
            row |= {f"top{rank}_class": entry.get("class", ""), f"top{rank}_confidence": entry.get("confidence")}
        rows.append(row)
    return rows


def _path_output_errors(exc: UnicodeEncodeError):
    """Per-image lines name their file even when the name is not valid UTF-8: its undecodable bytes are
    written back as they were (what `ls` and `find` print, so a pipe gets the real name), and a
    character the terminal's encoding lacks as a backslash escape; never an exception mid-output."""
    try:
        return codecs.lookup_error("surrogateescape")(exc)  # raises for what is not an undecodable byte
    except UnicodeEncodeError:
        return codecs.backslashreplace_errors(exc)


PATH_OUTPUT_ERRORS = "synthvit-paths"
codecs.register_error(PATH_OUTPUT_ERRORS, _path_output_errors)


# ---- the command --------------------------------------------------------------------


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """--model, as predict and app take it."""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"checkpoint file, or an MLflow model URI such as models:/NAME@ALIAS (default {DEFAULT_MODEL})",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGE|DIR|GLOB",
        help="image files, folders (searched recursively) or quoted glob patterns",
    )
    add_model_argument(parser)
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
    for option, value in (("--top-k", args.top_k), ("--batch-size", args.batch_size)):
        if value < 1:
            raise UserError(f"{option}={value} is invalid: an integer >= 1")
    if args.output is not None and args.output.suffix.lower() not in (".csv", ".json"):
        raise UserError(f"--output={str(args.output)!r} is invalid: name a .csv or .json file")
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors=PATH_OUTPUT_ERRORS)
    loaded = load_model(args.model)
    k = min(args.top_k, len(loaded.classes))
    files, problems = expand_inputs(args.inputs)
    runtime = RuntimeConfig(device=args.device, precision=args.precision)
    device = resolve_device(runtime)
    amp_dtype = autocast_dtype(runtime, device)
    results = []
    for result in itertools.chain(
        problems, predict_files(loaded, files, k, device, amp_dtype, args.batch_size, args.tta_flip)
    ):
        results.append(result)
        if "error" in result:
            path, reason = result["path"], result["error"]
            print(f"error: {reason}" if path in reason else f"error: {path}: {reason}", file=sys.stderr)
        if args.json or "error" not in result:
            print(json.dumps(result) if args.json else text_line(result), flush=True)
    failed = sum("error" in result for result in results)
    if args.output is not None and args.output.suffix.lower() == ".json":
        write_json(args.output, results)
    elif args.output is not None:
        write_csv(args.output, text_frame(table_rows(results, k)))
    if failed:
        print(f"{failed} of {len(results)} input(s) could not be classified", file=sys.stderr)
    return 1 if failed else 0
