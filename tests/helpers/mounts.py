"""Faults the kernel makes for real: a small filesystem that fills up, a read-only view of a folder.

Both need mount(2): root, or a container with CAP_SYS_ADMIN. `mount_refused` says why a
machine cannot, and the tests that need it skip with that reason. (chmod is no test of a
read-only folder: root writes through it.)
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

import pytest


def run_mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


@cache
def mount_refused() -> str | None:
    """Why this machine cannot mount a tmpfs (None when it can): probed once with a real mount."""
    if sys.platform != "linux":
        return "mounting a tmpfs needs Linux"
    if not shutil.which("mount") or not shutil.which("umount"):
        return "mount/umount are not installed"
    probe = Path(tempfile.mkdtemp(prefix="synthvit-mount-probe-"))
    try:
        result = run_mount("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe))
        if result.returncode:
            return (
                f"cannot mount a tmpfs here ({result.stderr.strip() or result.returncode}): "
                "run the fault tests as root or in a container with CAP_SYS_ADMIN"
            )
        run_mount("umount", str(probe))
        return None
    finally:
        probe.rmdir()


def require_mount() -> None:
    reason = mount_refused()
    if reason:
        pytest.skip(reason)


def unmount(path: Path) -> None:
    result = run_mount("umount", str(path))
    if result.returncode:  # a process still has a file open there: detach now, freed when it closes
        run_mount("umount", "-l", str(path))


@contextlib.contextmanager
def small_disk(path: Path, size: int):
    """A tmpfs of `size` bytes (rounded up to whole pages) mounted on the folder `path`, which keeps
    what it held: it is copied in, and back when the mount goes."""
    require_mount()
    path.mkdir(parents=True, exist_ok=True)
    held = Path(tempfile.mkdtemp(prefix="synthvit-held-"))
    shutil.copytree(path, held, dirs_exist_ok=True)
    result = run_mount("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    assert result.returncode == 0, result.stderr
    try:
        shutil.copytree(held, path, dirs_exist_ok=True)
        yield path
        shutil.copytree(path, held, dirs_exist_ok=True)  # what was written there survives the mount
    finally:
        unmount(path)
        shutil.copytree(held, path, dirs_exist_ok=True)
        shutil.rmtree(held)


def remount(path: Path, options: str) -> None:
    """Change a `small_disk`'s mount options: "ro", "rw", "size=N"."""
    result = run_mount("mount", "-o", f"remount,{options}", str(path))
    assert result.returncode == 0, result.stderr


def resize(path: Path, size: int) -> None:
    """Give a `small_disk` more (or less) room, as freeing space on a full disk does."""
    remount(path, f"size={size}")


@contextlib.contextmanager
def read_only_view(source: Path, view: Path):
    """`source` seen read-only at `view` (a read-only bind mount: EROFS for every write, root's too)."""
    require_mount()
    view.mkdir(parents=True, exist_ok=True)
    result = run_mount("mount", "--bind", str(source), str(view))
    assert result.returncode == 0, result.stderr
    try:
        result = run_mount("mount", "-o", "remount,ro,bind", str(view))
        if result.returncode:
            pytest.skip(f"cannot make a bind mount read-only here ({result.stderr.strip()})")
        yield view
    finally:
        unmount(view)
