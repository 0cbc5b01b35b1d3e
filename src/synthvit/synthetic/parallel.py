"""Worker processes for rendering.

Processes, not threads: a render is a few hundred numpy calls, and two threads trading
the GIL at every call ran no faster than one (slower when the other core was busy).
On Linux the workers are forked: they start at once and, unlike spawn or forkserver,
never re-run the caller's script, so a script without an `if __name__ == "__main__"`
guard works too. The workers only run numpy code of this package, so a parent holding
other threads (tqdm, MLflow) does not matter. Results never depend on the number of
workers: every draw is seeded by its own (seed, category, attempt) key.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor


def default_workers() -> int:
    """Usable CPU cores (respects taskset/cgroup CPU affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class InProcess:
    """The executor interface the generators use (map), run in this process."""

    def map(self, fn, iterable):
        return map(fn, iterable)


@contextlib.contextmanager
def worker_pool(workers: int):
    """An executor with `workers` processes; with one worker, this process does the work."""
    if workers <= 1:
        yield InProcess()
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))
    try:
        yield pool
    except BaseException:  # an error or Ctrl-C: drop the queued work instead of finishing it
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
