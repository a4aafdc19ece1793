"""Where a device's output goes, as ``--debugcon``/``--serial`` name it: nowhere, stdout, a
file, or (``--serial stdio``) the terminal both ways."""

from __future__ import annotations

import os
import sys
from typing import IO, TYPE_CHECKING

from .values import FILE, NONE, STDIO, STDOUT, Target

if TYPE_CHECKING:
    from ..devices.output import Output

__all__ = ["FILE", "NONE", "STDIO", "STDOUT", "Discard", "Relay", "Stdout", "Target", "stream_for"]


class Stdout:
    """stdout for guest output, remembering whether the last byte ended a line, so that a run
    ended mid-line (``--until``, a timeout) leaves the shell prompt on a line of its own."""

    def __init__(self, stream: IO[bytes] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout.buffer
        self.mid_line = False

    def write(self, data: bytes, /) -> int:
        if data:
            self.mid_line = not data.endswith(b"\n")
        return self.stream.write(data)

    def flush(self) -> None:
        self.stream.flush()

    def finish_line(self) -> None:
        """End a partial last line, on a terminal only: a pipe gets the guest's bytes as sent."""
        try:
            if self.mid_line and os.isatty(self.stream.fileno()):
                self.stream.write(b"\n")
                self.mid_line = False
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stdout has no line to finish


class Relay:
    """Output to ``target``, which may be chosen after the device writing here was built (a
    watcher that needs the machine the device belongs to)."""

    def __init__(self, target: Output) -> None:
        self.target = target

    def write(self, data: bytes, /) -> object:
        return self.target.write(data)

    def flush(self) -> object:
        return self.target.flush()


class Discard:
    """Output that goes nowhere (``none``): devices still run, their bytes are dropped."""

    def write(self, data: bytes, /) -> int:
        return len(data)

    def flush(self) -> None:
        pass


def stream_for(target: Target, stdout: Stdout) -> Stdout | IO[bytes] | Discard:
    """The stream of a non-interactive target (``stdio`` is the console's business)."""
    if target.kind == FILE:
        assert target.stream is not None
        return target.stream
    if target.kind in (STDOUT, STDIO):
        return stdout
    return Discard()
