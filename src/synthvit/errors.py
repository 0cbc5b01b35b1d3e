"""Errors that are the user's to fix, and how an entry point reports them: one line, never a traceback.

A `UserError` names the problem and the fix; `run_main` (every stage and `synthvit`
command runs under it) prints it as `error: ...` and exits 2. SIGTERM (what `kill`,
`dvc queue kill` and CI timeouts send) is raised as `Terminated`, a KeyboardInterrupt,
so a terminated stage unwinds like a Ctrl-C one: the atomic writers remove their
partial files, its MLflow run ends KILLED, and the resume state saved at the last
finished epoch stays for the next `dvc repro`. A full disk or a read-only folder
(OSError ENOSPC, EROFS, EACCES) is also one line, naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import yaml


class UserError(Exception):
    """Bad input (params, paths, files) or a machine problem the user can fix; the message names the fix."""


class ConfigError(UserError):
    """An invalid value in a params file."""

    def __init__(self, key: str, value, allowed: str, source: str = "params.yaml"):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{source}: {key}={value!r} is invalid: {allowed}")


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""


# ---- damaged files ------------------------------------------------------------------


def rebuild_hint(path) -> str:
    """How to replace `path` with a good copy: for an output of a stage (or a file within one), as the dvc.yaml
    of the repository holding it declares its outs and metrics, the `dvc repro -f` that rebuilds it (and where,
    when that repository is not the working directory: `synthvit predict` runs anywhere)."""
    absolute = Path(path).absolute()
    root = next((folder for folder in absolute.parents if (folder / "dvc.yaml").is_file()), None)
    if root is not None:
        with contextlib.suppress(OSError, yaml.YAMLError, AttributeError):  # a damaged dvc.yaml: no hint from it
            for stage, spec in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].items():
                for output in [*spec.get("outs", []), *spec.get("metrics", [])]:
                    output = next(iter(output)) if isinstance(output, dict) else output  # `- path: {cache: false}`
                    if absolute == root / output or root / output in absolute.parents:
                        where = "" if root == Path.cwd() else f" in {root}"
                        return f"rebuild it with `dvc repro -f {stage}`{where}"
    if Path(path).name == "params.yaml":
        return f"fix it, or restore the committed one with `git checkout {path}`"
    return "remove or replace the file"


def torch_load_reason(exc: Exception) -> str:
    """Why torch.load(weights_only=True) refused a file, in a few words (never torch's advice to unpickle)."""
    if "Unsupported global" in str(exc):  # a pickle naming classes or functions: code, not data
        return "it holds Python objects, not plain tensors: a foreign file, unsafe to unpickle"
    # Anything else (EOFError, a zip without its central directory, garbage opcodes) is a file cut short or not torch's.
    return "truncated or not a PyTorch file"


def damaged_message(path, what: str, reason: str) -> str:
    return f"{what} {path} is damaged or foreign ({reason}); {rebuild_hint(path)}"


# ---- the machine refusing a write ------------------------------------------------------

DISK_ERRORS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def refused_errno(exc: OSError | RuntimeError) -> int | None:
    """The errno (one of DISK_ERRORS) of a write the machine refused, or None for other errors.

    torch.save reports these as a RuntimeError from its zip writer, without a path or an
    errno: a full disk as "unexpected pos N vs M" (or "file write failed"), a folder it
    cannot create the file in as "open file failed with strerror: <the strerror>".
    """
    if isinstance(exc, OSError):
        return exc.errno if exc.errno in DISK_ERRORS else None
    text = str(exc)
    if "unexpected pos" in text or "file write failed" in text:
        return errno.ENOSPC
    return next((code for code in DISK_ERRORS if os.strerror(code) in text), None)


def fix_for(code: int) -> str:
    """What to do about a refused write, in a few words."""
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "free some space (or move the repository to a bigger disk)"
    if code == errno.EROFS:
        return "work in a writable clone of the repository (git clone)"
    return "make the folder writable for you, or work in a writable clone of the repository (git clone)"


# ---- the entry point ----------------------------------------------------------------


def raise_terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated()


def interruption(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM behind `exc`, if any. A signal that lands while a C extension module
    initialises (e.g. matplotlib's Agg renderer, imported with the first figure) comes out as
    "ImportError: initialization failed" caused by the KeyboardInterrupt; it is still a stop
    the user asked for, not a bug."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def stop(interrupt: KeyboardInterrupt) -> None:
    terminated = isinstance(interrupt, Terminated)
    print("terminated" if terminated else "interrupted", file=sys.stderr)
    sys.exit(128 + (signal.SIGTERM if terminated else signal.SIGINT))


def run_main(main: Callable[[], int | None]) -> None:
    """Run `main` as a process: exit 0 (or its code), 2 with one line for a UserError or a refused
    write, 130/143 for Ctrl-C/SIGTERM; any other exception keeps its traceback (a bug to report)."""
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        code = main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # `synthvit ... | head` closed the pipe: stop quietly, as other CLI tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        sys.exit(1)
    except KeyboardInterrupt as exc:
        stop(exc)
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno in DISK_ERRORS:  # a write the machine refused
            where = f" writing {exc.filename}" if exc.filename else ""
            print(f"error: {DISK_ERRORS[exc.errno]}{where}: {fix_for(exc.errno)} and run it again", file=sys.stderr)
            sys.exit(2)
        interrupt = interruption(exc)
        if interrupt is None:
            raise
        stop(interrupt)
    sys.exit(code or 0)
