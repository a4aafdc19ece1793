"""``scripts/setup`` run a second time (CI ran it first, as README says): it installs nothing,
and the virtual environment it made runs the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import needs_kvm

ROOT = Path(__file__).parent.parent
VENV = Path(os.environ.get("VENV", ROOT / ".venv"))

# The script works on the environment the tests run in; outside it (a developer's own Python)
# a run would build a new one, which is the first run's job, not this test's.
pytestmark = [needs_kvm, pytest.mark.skipif(
    Path(sys.prefix).resolve() != VENV.resolve(),
    reason="run from the environment scripts/setup made (README's test command)")]


def test_a_second_run_installs_nothing_and_the_venv_runs_the_cli() -> None:
    stamp = VENV / ".xinterface-setup"
    before = stamp.stat().st_mtime_ns
    done = subprocess.run(["bash", str(ROOT / "scripts" / "setup")], capture_output=True,
                          text=True, timeout=300, check=False, env=dict(os.environ, VENV=str(VENV)))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("== Debian packages: all ") and lines[0].endswith(" present")
    assert f"== virtual environment: {VENV}" in lines
    assert (f"== xinterface: installed in {VENV}, pyproject.toml, setup.py and the C sources "
            "unchanged") in lines
    assert "Hello from protected mode" in lines
    assert "installing" not in done.stdout and "creating" not in done.stdout
    assert stamp.stat().st_mtime_ns == before
    version = subprocess.run([str(VENV / "bin" / "xinterface"), "--version"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert version.returncode == 0
    assert version.stdout.startswith("xinterface, version ")
