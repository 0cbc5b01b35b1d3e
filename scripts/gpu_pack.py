#!/usr/bin/env python3
"""`make gpu-pack`: fill .gpu/ with what `make gpu-check` needs on a GPU machine without network, within
the 64 MiB that may travel there with the repository (docs/gpu-check.md).

.gpu/wheels: the wheels MLflow and pydantic need, found from the wheels' own Requires-Dist
(markers read for CPython 3.12 on x86-64 Linux), out of the shared CPython 3.12 set; a
wheel of something the machine already has is installed only if it lacks it (gpu_check.py).
DVC and its own dependencies stay behind: every wheel (47.6 MB) with the packed CIFAR-10
(18.6 MB) and the repository (~0.9 MB) comes to more than 64 MiB, so on the GPU the pipeline
step runs the stages of dvc.yaml in order instead of `dvc exp run` (which the CPU test runs).
.gpu/cifar10.tar.xz: the packed CIFAR-10. Prints the sizes; exits 1 above the limit.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LIMIT = 64 * 2**20  # what the device machine accepts: the repository's files and the carried folders
ROOTS = ("mlflow", "pydantic")  # what synthvit imports that a CUDA machine image lacks (DVC aside)
# A GPU machine's Python: the markers of each Requires-Dist are read for it.
TARGET = {
    "python_version": "3.12",
    "python_full_version": "3.12.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}


def requirements(wheel: Path) -> tuple[str, list[str]]:
    """(the wheel's project name, the projects it requires on the target Python, extras left out)."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(metadata).decode()
    name = canonicalize_name(re.search(r"^Name: (.+)$", text, re.MULTILINE).group(1).strip())
    needs = []
    for line in re.findall(r"^Requires-Dist: (.+)$", text, re.MULTILINE):
        requirement = Requirement(line.strip())
        if requirement.marker is None or requirement.marker.evaluate(TARGET):
            needs.append(canonicalize_name(requirement.name))
    return name, needs


def needed_wheels(folder: Path, roots=ROOTS) -> tuple[list[Path], list[str]]:
    """(the wheels in `folder` that `roots` need, directly or not; the projects they need that `folder`
    lacks, which the GPU machine must already have)."""
    wheels = {}
    for wheel in sorted(folder.glob("*.whl")):
        name, needs = requirements(wheel)
        wheels[name] = (wheel, needs)
    seen, absent, todo = set(), set(), [canonicalize_name(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen or name in absent:
            continue
        if name not in wheels:
            absent.add(name)
            continue
        seen.add(name)
        todo += wheels[name][1]
    return sorted(wheels[name][0] for name in seen), sorted(absent)


def repository_bytes() -> int:
    """The files that travel with the working tree: tracked and new ones, not the ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    return sum((REPO / name).stat().st_size for name in listed if name and (REPO / name).is_file())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheels", type=Path, default=REPO.parent / "shared" / "wheels-cp312")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "cifar10.tar.xz")
    parser.add_argument("--dest", type=Path, default=REPO / ".gpu")
    args = parser.parse_args(argv)

    wheels, absent = needed_wheels(args.wheels)
    shutil.rmtree(args.dest / "wheels", ignore_errors=True)
    (args.dest / "wheels").mkdir(parents=True)
    for wheel in wheels:
        shutil.copyfile(wheel, args.dest / "wheels" / wheel.name)
    shutil.copyfile(args.data, args.dest / args.data.name)  # contents only: the shared copies are read-only
    sizes = {
        f"wheels ({len(wheels)} of {len(list(args.wheels.glob('*.whl')))})": sum(w.stat().st_size for w in wheels),
        args.data.name: args.data.stat().st_size,
        "repository (tracked and new files)": repository_bytes(),
    }
    for label, size in sizes.items():
        print(f"{label:<40} {size / 1e6:7.2f} MB")
    total = sum(sizes.values())
    verdict = "fits" if total <= LIMIT else "TOO MUCH"
    print(f"{'total':<40} {total / 1e6:7.2f} MB of {LIMIT / 1e6:.2f} MB (64 MiB): {verdict}")
    print(
        f"not in the wheels, so the GPU machine must have them (gpu_check's install step checks): {', '.join(absent)}"
    )
    print(f"carry: {args.dest.relative_to(REPO) if args.dest.is_relative_to(REPO) else args.dest}")
    return 0 if total <= LIMIT else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
