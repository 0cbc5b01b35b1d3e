"""Entry-point wrapper: user errors become one line and exit code 2, never a traceback."""

from __future__ import annotations

import os
import sys
from typing import Callable

from synthvit.errors import UserError


def run_main(main: Callable[[], int | None]) -> None:
    from synthvit import distributed, tracking

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
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        tracking.record_early_failure(exc)
        raise
    finally:
        distributed.cleanup()
    sys.exit(code or 0)
