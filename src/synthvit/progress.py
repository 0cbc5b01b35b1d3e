"""Progress bars on a terminal, plain log lines elsewhere (CI logs, DVC queues)."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


def on_terminal() -> bool:
    return sys.stderr.isatty()


def progress_bar(iterable=None, **kwargs):
    """A tqdm bar that stays silent when stderr is not a terminal."""
    kwargs.setdefault("disable", not on_terminal())
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


def log(message: str) -> None:
    """One timestamped line on stderr; safe to call while a bar is drawn."""
    tqdm.write(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr)
