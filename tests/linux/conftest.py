"""The test kernel and initramfs, from the cache that guests/linux/build.py fills.

A cold cache builds them (minutes: CI's ``.ci/run`` builds them before the tests); a warm one
returns at once. See docs/linux.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BUILD = Path(__file__).resolve().parents[2] / "guests" / "linux" / "build.py"
BUILD_TIMEOUT = 3600.0


@pytest.fixture(scope="session")
def linux() -> dict[str, str]:
    """Paths of ``vmlinux``, ``bzImage``, ``initramfs``, ``features`` (json), ``config``."""
    done = subprocess.run([sys.executable, str(BUILD), "--json"], capture_output=True,
                          text=True, timeout=BUILD_TIMEOUT, check=False)
    assert done.returncode == 0, f"guests/linux/build.py failed:\n{done.stderr[-4000:]}"
    paths: dict[str, str] = json.loads(done.stdout)
    return paths
