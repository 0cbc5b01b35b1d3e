"""`synthvit check [PARAMS]`: validate a params file without running anything.

Prints what the file describes (dataset, pre-training set, model) or the first problem as
one line naming the file, the key, the value and what is allowed (exit code 2).
"""

from __future__ import annotations

import argparse

from synthvit.config import load_params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("params", nargs="?", default="params.yaml", help="the params file (default: params.yaml)")


def run(args) -> int:
    params = load_params(args.params)
    synthetic = params.synthetic
    print(f"{args.params}: valid")
    print(f"  data:      {params.data.name} ({params.data.root})")
    print(
        f"  pretrain:  {synthetic.kind}, {synthetic.num_classes} categories x "
        f"{synthetic.instances_per_class if synthetic.kind == 'fractaldb' else 1} images, "
        f"{params.pretrain.epochs} epochs"
    )
    print(f"  finetune:  init={params.finetune.init}, {params.finetune.epochs} epochs")
    print(f"  model:     {params.model.summary()}")
    return 0
