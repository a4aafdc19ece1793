"""Shared fixtures: KVM availability, and guests assembled from tests/guests/*.S."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from xinterface.loader import assemble

GUESTS = Path(__file__).parent / "guests"
EXAMPLES = Path(__file__).parent.parent / "examples"

Assemble = Callable[..., bytes]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Name the exit loop the suite ran on (it runs once on each: README's test command)."""
    from xinterface import accel

    terminalreporter.write_line(f"xinterface exit loop: {accel.LOOP} "
                                f"({accel.PURE_PYTHON_ENV}=1 forces the Python loop)")


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


# Only a missing /dev/kvm may skip; .ci/run refuses to run without it, so CI never skips.
needs_kvm = pytest.mark.skipif(not kvm_usable(), reason="/dev/kvm is missing or not usable")


@pytest.fixture
def guest() -> Assemble:
    """``guest("name", gpa=0x1000, mode="real", **defines)``: tests/guests/name.S as a binary."""

    def build(name: str, *, gpa: int = 0x1000, mode: str = "real", **defines: int) -> bytes:
        path = GUESTS / f"{name}.S"
        if not path.exists():
            path = EXAMPLES / f"{name}.S"
        return assemble(path, gpa=gpa, bits=64 if mode == "long" else 32, defines=defines)

    return build


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` every millisecond; False if it is still false after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True
