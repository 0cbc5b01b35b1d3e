"""Entry-point wrapper: user errors become one line and exit code 2, never a traceback.

SIGTERM (what `kill`, `dvc queue kill` and CI timeouts send) is raised as `Terminated`, a
KeyboardInterrupt, so a terminated stage unwinds like a Ctrl-C one: partial files are
removed by the atomic writers, its MLflow run ends KILLED, and the resume state saved at
the last finished epoch stays for the next `dvc repro`.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Callable

from synthvit.errors import UserError


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""


def raise_terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated()


def run_main(main: Callable[[], int | None]) -> None:
    from synthvit import distributed, tracking

    signal.signal(signal.SIGTERM, raise_terminated)
    # A DVC stage that fails before its MLflow run opened still fails its pipeline's parent run.
    try:
        code = main()
    except UserError as exc:
        tracking.record_early_failure(exc)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # `synthvit ... | head` closed the pipe: stop quietly, as other CLI tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        sys.exit(1)
    except KeyboardInterrupt as exc:
        tracking.record_early_failure(exc)
        terminated = isinstance(exc, Terminated)
        print("terminated" if terminated else "interrupted", file=sys.stderr)
        sys.exit(128 + (signal.SIGTERM if terminated else signal.SIGINT))
    except Exception as exc:
        tracking.record_early_failure(exc)
        raise
    finally:
        distributed.cleanup()
    sys.exit(code or 0)
