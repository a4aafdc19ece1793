"""Run ``xinterface`` as a user does: a real process, with pipes or on a pseudo-terminal."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import termios
import time
from pathlib import Path
from types import TracebackType
from typing import Any

# Generous: a deadline only turns a hang into a failure, it measures nothing.
DEADLINE = 60.0


def xinterface(*args: str | Path, timeout: float = DEADLINE,
               env: dict[str, str] | None = None,
               stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xinterface", *map(str, args)],
                          capture_output=True, text=True, errors="replace", timeout=timeout,
                          check=False, env=env, input=stdin)


def error_lines(stderr: str) -> list[str]:
    """Our error lines and click's: ``xinterface: ...`` and ``Error: ...``."""
    return [ln for ln in stderr.splitlines() if ln.startswith(("xinterface:", "Error:"))]


class Terminal:
    """``xinterface ARGS`` with a pseudo-terminal as its stdin, stdout and stderr.

    ``attributes()`` reads the terminal's termios as the program sees them (the slave side,
    which this process keeps open too); ``expect(text)`` reads the screen until ``text``.
    """

    def __init__(self, *args: str | Path) -> None:
        self.master, self.slave = pty.openpty()
        self.before = termios.tcgetattr(self.slave)
        self.screen = b""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xinterface", *map(str, args)], stdin=self.slave,
            stdout=self.slave, stderr=self.slave, start_new_session=True, close_fds=True)

    def attributes(self) -> list[Any]:
        return termios.tcgetattr(self.slave)

    def press(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def _read(self, wait: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], wait)
        if not ready:
            return False
        try:
            data = os.read(self.master, 4096)
        except OSError:  # EIO: nobody has the terminal open any more
            return False
        self.screen += data
        return bool(data)

    def expect(self, text: bytes) -> None:
        end = time.monotonic() + DEADLINE
        while text not in self.screen:
            if time.monotonic() > end:
                raise AssertionError(f"{text!r} never appeared; the screen: {self.screen!r}")
            self._read(0.1)

    def wait(self) -> int:
        status = self.proc.wait(timeout=DEADLINE)
        while self._read(0.1):  # what it printed last
            pass
        return status

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        os.close(self.slave)
