"""`synthvit export CHECKPOINT DIR`: a synthvit checkpoint as a folder timm loads by itself.

    synthvit export models/pretrain.pt fractal-vit/          # the fractal-pre-trained backbone
    synthvit export models/finetune.pt cifar10-vit/ --push me/cifar10-vit

Writes DIR/model.safetensors and DIR/config.json through timm's own `save_for_hf`, so
that, without synthvit installed,

    model = timm.create_model("local-dir:DIR", pretrained=True)               # same weights, same logits
    model = timm.create_model("local-dir:DIR", pretrained=True, num_classes=100)   # a new head for your task

and `timm.data.resolve_data_config(model=model)` gives the input size and normalisation
it was trained with. DIR/README.md is a model card: what the model is, the recipe that
made it (kept in the checkpoint), and its results when results/ holds a locked run
that produced exactly these weights. `--push REPO_ID` uploads the same folder to the
Hugging Face hub (huggingface_hub's `upload_folder`; needs a login: `hf auth login`).

A model with a convolutional stem (model.patch_embed=conv) is synthvit's own layer,
which timm cannot rebuild from a config: export refuses it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import huggingface_hub
import yaml
from timm.models import save_for_hf

from synthvit.config import ModelConfig
from synthvit.errors import UserError
from synthvit.models import load_checkpoint, model_from_checkpoint

RESULTS = Path("results")
WHAT = {
    "pretrain": "a Vision Transformer pre-trained on formula-driven fractal images (no natural images, no labels "
    "by people): a backbone to fine-tune",
    "finetune": "a Vision Transformer fine-tuned to classify images",
}


def locked_results(checkpoint_md5: str, results: Path = RESULTS) -> list[tuple[str, dict]]:
    """(locked run, its test metrics) for every run in results/ whose dvc.lock produced these exact weights."""
    found = []
    for lock in sorted(results.glob("*/*/dvc.lock")):
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values()
        if any(out.get("md5") == checkpoint_md5 for stage in stages for out in stage.get("outs", [])):
            metrics = lock.parent / "metrics" / "evaluate.json"
            found.append((str(lock.parent), json.loads(metrics.read_text()) if metrics.is_file() else {}))
    return found


def markdown_table(title: str, header: list[str], rows: list[tuple]) -> list[str]:
    """A model card section: its title and a table, one row a tuple of cells."""
    lines = [f"## {title}", "", f"| {' | '.join(header)} |", "|---" * len(header) + "|"]
    return lines + [f"| {' | '.join(map(str, row))} |" for row in rows] + [""]


def model_card(checkpoint: dict, source: Path, name: str) -> str:
    """README.md for the exported folder."""
    stage = checkpoint.get("stage", "finetune")
    cfg = ModelConfig(**checkpoint["model_config"])
    classes = checkpoint["classes"]
    recipe = checkpoint.get("recipe") or {}
    lines = [
        "---",
        "library_name: timm",
        "pipeline_tag: image-classification",
        "tags: [image-classification, timm, synthvit]",
        "---",
        "",
        f"# {name}",
        "",
        f"{WHAT.get(stage, WHAT['finetune']).capitalize()}, exported by synthvit from `{source}`.",
        "",
        f"- **Architecture:** {cfg.summary()}",
        f"- **Classes ({len(classes)}):** {', '.join(classes[:20])}{' ...' if len(classes) > 20 else ''}",
        f"- **Input:** {cfg.img_size} x {cfg.img_size} RGB, scaled to [0, 1], "
        f"normalised with mean {checkpoint['mean']} and std {checkpoint['std']}",
        "",
        "## Use it",
        "",
        "```python",
        "import timm",
        "",
        f'model = timm.create_model("local-dir:{name}", pretrained=True)'
        + ("  # or num_classes=N for your task" if stage == "pretrain" else ""),
        "config = timm.data.resolve_data_config(model=model)  # input size, mean, std",
        "```",
        "",
    ]
    summary = checkpoint.get("summary") or {}
    if summary:
        rows = [(key, f"{value:.4g}" if isinstance(value, float) else value) for key, value in summary.items()]
        lines += markdown_table("Training", ["metric", "value"], rows)
    results = locked_results(hashlib.md5(source.read_bytes()).hexdigest())
    if results:
        rows = [(run, f"{m.get('top1', float('nan')):.4f}", f"{m.get('ece', float('nan')):.4f}") for run, m in results]
        title = "Results (locked in the synthvit repository's results/)"
        lines += markdown_table(title, ["locked run", "test top-1", "ECE"], rows)
    if recipe:
        lines += [
            "## Recipe (the params that made it)",
            "",
            "```yaml",
            yaml.safe_dump(recipe, sort_keys=False).rstrip(),
            "```",
            "",
        ]
    return "\n".join(lines)


def export(source: Path, folder: Path, force: bool = False) -> Path:
    """Write the checkpoint at `source` into `folder` as timm's model folder with a model card; returns the folder."""
    checkpoint = load_checkpoint(source)
    if checkpoint["model_config"].get("patch_embed") == "conv":
        raise UserError(
            f"{source} has a convolutional stem (model.patch_embed=conv), synthvit's own layer that timm "
            "cannot rebuild from a config; export a model with linear patches"
        )
    if folder.exists() and any(folder.iterdir()) and not force:
        raise UserError(f"{folder} exists and is not empty: choose another folder, or --force to replace its files")
    model = model_from_checkpoint(checkpoint).eval()
    stage = checkpoint.get("stage", "finetune")
    size = int(checkpoint["model_config"]["img_size"])
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".synthvit-export-", dir=folder.parent) as tmp:
        staging = Path(tmp) / "export"
        save_for_hf(
            model,
            staging,
            model_config={"label_names": list(checkpoint["classes"]), "pretrained_cfg": {"tag": f"synthvit_{stage}"}},
            # How images are prepared for the model: its size, the resize, the normalisation it was trained with.
            data_config={
                "input_size": (3, size, size),
                "interpolation": "bicubic",
                "crop_pct": 1.0,
                "mean": tuple(checkpoint["mean"]),
                "std": tuple(checkpoint["std"]),
            },
            safe_serialization=True,
        )
        config = json.loads((staging / "config.json").read_text())
        config["pretrained_cfg"].pop("license", None)  # the base model's entry, not these weights'
        # What synthvit needs to fine-tune from the folder (finetune.backbone): timm ignores the key.
        config["synthvit"] = {
            "stage": stage,
            "model_config": checkpoint["model_config"],
            "recipe": checkpoint.get("recipe") or {},
            "summary": checkpoint.get("summary") or {},
        }
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (staging / "README.md").write_text(model_card(checkpoint, source, folder.name))
        folder.mkdir(parents=True, exist_ok=True)
        for path in staging.iterdir():  # same-named files are replaced; others the user put there stay
            shutil.move(str(path), folder / path.name)
    return folder


def push(folder: Path, repo_id: str) -> str:
    """Upload the exported folder as it is (weights, config, model card) to the hub; one line when it cannot."""
    try:
        url = huggingface_hub.create_repo(repo_id, exist_ok=True)
        huggingface_hub.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="synthvit export")
    except Exception as exc:  # noqa: BLE001 - network and auth errors come in many types
        raise UserError(
            f"cannot push to the Hugging Face hub as {repo_id} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); the export is in {folder}: "
            "log in (`hf auth login`) and check the network, then run it again"
        ) from None
    return str(url)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a synthvit checkpoint (models/pretrain.pt, models/finetune.pt)")
    parser.add_argument("folder", type=Path, help="the folder to write (timm's local-dir layout)")
    parser.add_argument("--push", metavar="REPO_ID", help="also upload it to the Hugging Face hub (needs a login)")
    parser.add_argument("--force", action="store_true", help="write into a folder that already holds files")


def run(args) -> int:
    folder = export(args.checkpoint, args.folder, args.force)
    print(f'exported {args.checkpoint} to {folder}: timm.create_model("local-dir:{folder}", pretrained=True)')
    if args.push:
        print(f"pushed to the Hugging Face hub: {push(folder, args.push)}")
    return 0
