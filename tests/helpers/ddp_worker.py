"""Run by test_distributed.py under torchrun: tiny deterministic training, results saved by rank 0."""

import json
import os
import sys
from pathlib import Path

import torch

from helpers.training import bright_vs_dark, plain_recipe
from synthvit.config import ModelConfig, RuntimeConfig
from synthvit.models import create_model
from synthvit.runtime import seed_everything
from synthvit.training import distributed
from synthvit.training.engine import train

MODEL = ModelConfig(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.0)
# No augmentation and no dropout: every random draw that differs between processes is off.
RECIPE = plain_recipe(
    epochs=2, batch_size=16, lr=2e-3, crop_scale=[1.0, 1.0], crop_padding=0, hflip=0.0, checkpoint_every=0
)


def run(out_path: str) -> None:
    seed_everything(0)
    model = create_model(MODEL, 2)
    history = train(
        model, bright_vs_dark(64), RECIPE, RuntimeConfig(device="cpu"), seed=0, eval_set=bright_vs_dark(30, seed=5)
    )
    # Every process says who it was; only the job's main process writes the result.
    ranks = {name: os.environ.get(name) for name in ("RANK", "LOCAL_RANK", "GROUP_RANK")}
    Path(f"{out_path}.{os.getpid()}.ranks.json").write_text(json.dumps({**ranks, "wrote": distributed.is_main()}))
    if distributed.is_main():
        torch.save({"state": model.state_dict(), "history": history, "world": distributed.world_size()}, out_path)
    distributed.cleanup()


if __name__ == "__main__":
    run(sys.argv[1])
