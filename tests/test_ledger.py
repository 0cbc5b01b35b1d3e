"""The README's claims ledger: every `dvc exp run` line in it is a valid experiment.

The block is run through bash as written (its shell variables expand as a user's shell
expands them), with `dvc` standing in as a function that prints its arguments; each
line's -S overrides are applied to params.yaml as DVC applies them (YAML 1.2 values), the
params validate, and the model builds (timm, no weights).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml
from ruamel.yaml import YAML

from synthvit.config import parse_params
from synthvit.models import create_model

REPO = Path(__file__).resolve().parents[1]
# What the ledger measured (README table), by experiment name: the params that define the row.
MEASURED = {
    "ledger-cifar10-vit-scratch": {"data.name": "imagefolder", "model.patch_embed": "linear", "finetune.epochs": 3},
    "ledger-cifar10-vit-scratch-conv": {"data.name": "imagefolder", "model.patch_embed": "conv", "finetune.epochs": 3},
    "ledger-mnist-vit-scratch-p7": {"data.name": "mnist", "model.patch_size": 7, "finetune.epochs": 3},
    "ledger-mnist-vit-scratch": {"data.name": "mnist", "model.patch_size": 4, "finetune.epochs": 1},
}


def ledger_runs() -> dict[str, list[str]]:
    """{experiment name: its -S overrides} of the README's ledger command block."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## The claims ledger", 1)[1]
    block = re.search(r"```bash\n(SKIP_PRETRAIN=.*?)```", section, re.S).group(1)
    # Each `dvc exp run` prints its arguments NUL-separated, one line per run.
    shim = "dvc() { printf '%s\\0' \"$@\"; printf '\\n'; }\n"
    out = subprocess.run(["bash", "-c", shim + block], capture_output=True, text=True, check=True).stdout
    runs = {}
    for line in filter(None, out.split("\n")):
        args = line.rstrip("\0").split("\0")
        assert args[:3] == ["exp", "run", "-n"], args
        runs[args[3]] = [args[i + 1] for i, a in enumerate(args) if a == "-S"]
    return runs


def with_overrides(overrides: list[str]):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for override in overrides:
        key, value = override.split("=", 1)
        *path, last = key.split(".")
        node = raw
        for part in path:
            node = node[part]
        assert last in node, f"{key}: not a params.yaml key"
        node[last] = YAML(typ="safe").load(value)  # DVC reads -S values as YAML 1.2: 1e-3 is a number
    return parse_params(raw)


def test_every_ledger_command_is_a_valid_experiment():
    runs = ledger_runs()
    assert set(MEASURED) <= set(runs) and len(runs) == 11
    for name, overrides in runs.items():
        params = with_overrides(overrides)
        model = create_model(params.model, num_classes=10)
        assert sum(p.numel() for p in model.parameters()) > 0, name
        if name in MEASURED:
            flat = {"data.name": params.data.name, "model.patch_embed": params.model.patch_embed,
                    "model.patch_size": params.model.patch_size, "finetune.epochs": params.finetune.epochs}
            assert {k: flat[k] for k in MEASURED[name]} == MEASURED[name], name
            assert params.finetune.init == "scratch" and params.pretrain.epochs == 1, name
