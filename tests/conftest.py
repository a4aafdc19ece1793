"""Shared fixtures: KVM availability, and guests assembled from tests/guests/*.S."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from xinterface.loader import assemble

GUESTS = Path(__file__).parent / "guests"
EXAMPLES = Path(__file__).parent.parent / "examples"

Assemble = Callable[..., bytes]
T = TypeVar("T")


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


def finish(body: Callable[[], T], seconds: float) -> T:
    """``body()`` on a daemon thread: its result, or a test failure if it hangs."""
    out: list[T] = []
    err: list[BaseException] = []

    def target() -> None:
        try:
            out.append(body())
        except BaseException as exc:
            err.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"hung: not done after {seconds} s")
    if err:
        raise err[0]
    return out[0]
