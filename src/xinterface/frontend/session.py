"""One run of a machine from the command line: its serial console, if any, around the run."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from .outputs import STDIO, Stdout, Target, stream_for
from .report import fail

if TYPE_CHECKING:
    from ..boards.platform import Platform
    from ..devices import Output
    from ..qmp.controls import Controls
    from ..runner.machine import Machine, RunResult
    from .console import SerialConsole


class Session:
    """The outputs of a run and the console that may wrap it.

    ``serial_output()`` is what the UART writes to; ``connect(feed)`` gives the console the
    UART's receive side; ``run()`` runs the machine with the terminal in raw mode (when
    ``--serial stdio``) and gives it back on every way out. ``qmp`` (``unix:PATH``) serves
    QMP during the run and ``metrics`` (a path) gets the counters; both, and the console's
    ``Ctrl-A c`` monitor, act through one :class:`~xinterface.qmp.Controls`. ``platform``:
    the board's devices, once built (``info pci``, the metrics).
    """

    def __init__(self, machine: Machine, serial: Target, stdout: Stdout, *,
                 qmp: str | None = None, metrics: str | None = None) -> None:
        self.machine = machine
        self.stdout = stdout
        self.serial = serial
        self.qmp = qmp
        self.metrics = metrics
        # Only a monitor needs the run control of QMP: `xinterface run` starts without it.
        self.controls: Controls | None = None
        if qmp is not None or serial.kind == STDIO:
            from ..qmp.controls import Controls

            self.controls = Controls(machine)
        self._platform: Platform | None = None
        self.console: SerialConsole | None = None
        if serial.kind == STDIO:
            from ..qmp.hmp import execute
            from .console import SerialConsole

            controls = self.controls
            assert controls is not None
            self.console = SerialConsole(machine.stop, stdout=stdout,
                                         monitor=lambda line: execute(controls, line))

    @property
    def platform(self) -> Platform | None:
        return self._platform

    @platform.setter
    def platform(self, value: Platform | None) -> None:
        self._platform = value
        if self.controls is not None:
            self.controls.platform = value

    def serial_output(self) -> Output:
        if self.console is not None:
            return self.console
        return stream_for(self.serial, self.stdout)

    def connect(self, feed: Callable[[bytes], None]) -> None:
        if self.console is not None:
            self.console.feed = feed

    def run(self, timeout: float | None) -> RunResult:
        with contextlib.ExitStack() as stack:
            if self.metrics is not None:
                from ..observe.metrics import MetricsWriter

                file = stack.enter_context(open(self.metrics, "w"))
                stack.callback(MetricsWriter(file, self.machine, lambda: self.platform).close)
            if self.qmp is not None:
                from ..qmp.server import QmpServer, parse_address

                assert self.controls is not None
                stack.enter_context(QmpServer(parse_address(self.qmp), self.controls))
            if self.console is not None:
                stack.enter_context(self.console)
            result = None
            try:
                result = self.machine.run(timeout=timeout)
            finally:
                if self.controls is not None:
                    self.controls.run_ended(result)
            return result

    def check_console(self) -> None:
        """Report a console that failed while the guest ran (its terminal is restored)."""
        error = self.console.error if self.console is not None else None
        if error is not None:
            fail(f"the serial console stopped reading the terminal: {error}", exc=error)

    @property
    def quit_requested(self) -> bool:
        return ((self.console is not None and self.console.quit_requested)
                or (self.controls is not None and self.controls.quit_requested))

