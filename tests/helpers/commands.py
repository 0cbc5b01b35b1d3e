"""`synthvit ...` in the test's own process: the same entry point a user runs, without paying for torch's
import again; its exit code and what it printed."""

from __future__ import annotations

import pytest

from synthvit.commands.cli import main


def run_synthvit(capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `synthvit ARGS`."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err
