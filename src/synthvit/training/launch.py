"""Run a training stage under `runtime.launcher` (python, or torchrun with its options).

dvc.yaml runs `python -m synthvit.training.launch stages/pretrain.py` instead of interpolating
`${runtime.launcher}` into the command: DVC 3.67 records the resolved command in dvc.lock
and re-runs a stage whose command changed ("changed command", measured), so switching
from one process to torchrun would retrain a model that comes out the same (torchrun's
processes split each global batch: same batches, rounding aside). Read here, the launcher
is not part of the stage's identity.
"""

from __future__ import annotations

import os
import runpy
import shlex
import sys

from synthvit.config import load_params
from synthvit.errors import run_main


def main() -> None:
    if len(sys.argv) != 2:
        print("usage: python -m synthvit.training.launch STAGE_SCRIPT", file=sys.stderr)
        sys.exit(2)
    script = sys.argv[1]
    launcher = shlex.split(load_params().runtime.launcher)
    if launcher == ["python"]:  # the default: run the stage in this interpreter, no second start-up
        sys.argv = [script]
        runpy.run_path(script, run_name="__main__")
        return
    os.execvp(launcher[0], [*launcher, script])


if __name__ == "__main__":
    run_main(main)
