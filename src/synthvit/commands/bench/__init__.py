"""Benchmarks that print a figure (`synthvit bench ...`), and the reference renderers they compare with."""

from __future__ import annotations

import time


def timed(function, *args, **kwargs) -> tuple[object, float]:
    """(what function(*args, **kwargs) returns, the seconds it took)."""
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started
