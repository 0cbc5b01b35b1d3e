"""Progress bars on a terminal, plain log lines elsewhere (CI logs, DVC queues)."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


def progress_bar(iterable=None, **kwargs):
    """A tqdm bar that stays silent when stderr is not a terminal (tqdm's own `disable=None`).

    A disabled bar does not count: never drive periodic work off `bar.n`.
    """
    kwargs.setdefault("disable", None)
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


def log(message: str) -> None:
    """One timestamped line on stderr; safe to call while a bar is drawn."""
    tqdm.write(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr)
