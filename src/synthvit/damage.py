"""One line for a damaged or foreign file: which file, and how to get a good one back.

Never the loader's own advice: torch suggests `weights_only=False` for a file it will
not load safely, which is wrong for a corrupt file and unsafe for an untrusted one.
"""

from __future__ import annotations

from pathlib import Path

# Files each stage writes, so a damaged one names the command that rebuilds it.
WRITTEN_BY = {"models/pretrain.pt": "pretrain", "models/finetune.pt": "finetune", "data/synthetic": "generate_synthetic"}


def rebuild_hint(path) -> str:
    """How to replace `path` with a good copy."""
    parts = Path(path).as_posix()
    for output, stage in WRITTEN_BY.items():
        if parts == output or parts.endswith("/" + output) or f"{output}/" in parts:
            return f"rebuild it with `dvc repro -f {stage}`"
    if Path(path).name == "params.yaml":
        return f"fix it, or restore the committed one with `git checkout {path}`"
    return "remove or replace the file"


def torch_load_reason(exc: Exception) -> str:
    """Why torch.load(weights_only=True) refused a file, in a few words."""
    if "Unsupported global" in str(exc):  # a pickle naming classes or functions: code, not data
        return "it holds Python objects, not plain tensors: a foreign file, unsafe to unpickle"
    # Anything else (EOFError, a zip without its central directory, garbage opcodes) is a file cut short or not torch's.
    return "truncated or not a PyTorch file"


def damaged_message(path, what: str, reason: str) -> str:
    return f"{what} {path} is damaged or foreign ({reason}); {rebuild_hint(path)}"
