"""One run of a machine from the command line: its serial console, if any, around the run."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from .outputs import STDIO, Stdout, Target, stream_for
from .report import fail

if TYPE_CHECKING:
    from ..devices import Output
    from ..runner.machine import Machine, RunResult
    from .console import SerialConsole


class Session:
    """The outputs of a run and the console that may wrap it.

    ``serial_output()`` is what the UART writes to; ``connect(feed)`` gives the console the
    UART's receive side; ``run()`` runs the machine with the terminal in raw mode (when
    ``--serial stdio``) and gives it back on every way out.
    """

    def __init__(self, machine: Machine, serial: Target, stdout: Stdout) -> None:
        self.machine = machine
        self.stdout = stdout
        self.serial = serial
        self.console: SerialConsole | None = None
        if serial.kind == STDIO:
            from .console import SerialConsole

            self.console = SerialConsole(machine.stop, stdout=stdout)

    def serial_output(self) -> Output:
        if self.console is not None:
            return self.console
        return stream_for(self.serial, self.stdout)

    def connect(self, feed: Callable[[bytes], None]) -> None:
        if self.console is not None:
            self.console.feed = feed

    def run(self, timeout: float | None) -> RunResult:
        with self.console if self.console is not None else contextlib.nullcontext():
            return self.machine.run(timeout=timeout)

    def check_console(self) -> None:
        """Report a console that failed while the guest ran (its terminal is restored)."""
        error = self.console.error if self.console is not None else None
        if error is not None:
            fail(f"the serial console stopped reading the terminal: {error}", exc=error)

    @property
    def quit_requested(self) -> bool:
        return self.console is not None and self.console.quit_requested

