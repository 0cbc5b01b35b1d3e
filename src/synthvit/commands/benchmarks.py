"""Benchmark figures kept as results: `synthvit bench ... --record NAME` writes results/benchmarks/NAME.txt.

The file holds the command, the date and the machine (CPU, cores, threads, accelerator,
library versions: a figure means nothing without them) and the benchmark's own output.
The documents quote it between `<!-- results benchmarks/NAME -->` markers
(`synthvit results readme`), so every speed they give came from a command a user can run.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import re
import sys
from pathlib import Path

import yaml

from synthvit.errors import UserError
from synthvit.files import write_text
from synthvit.tracking.timing import machine

BENCHMARKS = Path("results/benchmarks")


class Tee(io.TextIOBase):
    """Writes to the terminal and keeps a copy."""

    def __init__(self, stream):
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def record(run, args, command: str) -> int:
    if not re.fullmatch(r"[\w.-]+", args.record):
        raise UserError(f"--record {args.record!r} is invalid: a name of letters, digits, . _ -")
    tee = Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        code = run(args)
    header = {"command": command.strip(), "date": datetime.date.today().isoformat(), "machine": machine()}
    path = write_text(
        BENCHMARKS / f"{args.record}.txt", yaml.safe_dump(header, sort_keys=False) + "---\n" + tee.copy.getvalue()
    )
    print(f"recorded in {path}", file=sys.stderr)
    return code


def quoted(name: str) -> str:
    """A recorded benchmark as the documents show it: its output, then the command and the machine."""
    path = BENCHMARKS / f"{name}.txt"
    if not path.is_file():
        raise UserError(f"no recorded benchmark {path}: run the bench with --record {name}")
    header, output = path.read_text().split("---\n", 1)
    meta = yaml.safe_load(header)
    host = meta["machine"]
    where = (
        f"{host['cpu']}, {host['cpu_cores']} cores, {host['torch_threads']} torch threads, "
        f"accelerator {host['accelerator']}, torch {host['torch']}"
    )
    return f"```\n$ {meta['command']}\n{output.rstrip()}\n```\n\nMeasured {meta['date']} on {where}.\n"
