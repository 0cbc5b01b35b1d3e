"""Debian's headless Chromium driven by selenium, for the browser tests (`make browser-deps` installs it)."""

from __future__ import annotations

import os

from helpers.repo import REPO

ARTIFACTS = REPO / "test-artifacts"  # screenshots a failing browser test leaves
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
]


def browser_available() -> str | None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip)")
    return ", ".join(missing) or None
