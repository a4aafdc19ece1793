"""A machine running in a background thread, for a test to watch: its consoles, and once it
ends, how (reason, exit status, exits by kind)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from .console import Console

if TYPE_CHECKING:
    from ..boards.platform import Platform
    from ..runner.machine import Machine, RunResult


class Guest:
    """``machine`` with ``console`` (COM1) and ``debugcon`` (the debug console) as its
    outputs. :meth:`start` runs it in a thread; :meth:`wait` gives the
    :class:`~xinterface.runner.machine.RunResult` (``reason``, ``exit_code``, ``exits``)
    and re-raises what the run raised."""

    def __init__(self, machine: Machine, console: Console, debugcon: Console,
                 platform: Platform | None = None) -> None:
        self.machine = machine
        self.console = console
        self.debugcon = debugcon
        self.platform = platform
        self._thread: threading.Thread | None = None
        self._result: RunResult | None = None
        self._error: BaseException | None = None

    def start(self, timeout: float | None = None) -> Guest:
        """Run the guest in the background (``timeout``: the run's own limit)."""
        if self._thread is not None:
            raise RuntimeError("the guest was started already")
        self._thread = threading.Thread(target=self._run, args=(timeout,),
                                        name="xinterface-guest", daemon=True)
        self._thread.start()
        return self

    def _run(self, timeout: float | None) -> None:
        try:
            self._result = self.machine.run(timeout=timeout)
        except BaseException as exc:
            self._error = exc
        finally:
            self.console.close()
            self.debugcon.close()

    def wait(self, timeout: float = 30.0) -> RunResult:
        """The run's result once it ended (starting it if it was not); ``AssertionError``
        if it still runs after ``timeout`` seconds (it is stopped then)."""
        if self._thread is None:
            self.start()
        assert self._thread is not None
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.stop()
            raise AssertionError(f"the guest still ran after {timeout:g} s; its console "
                                 f"showed:\n{self.console.seen!r}\ndebug console:\n"
                                 f"{self.debugcon.seen!r}")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    @property
    def exit_code(self) -> int | None:
        """The debug-exit status of the finished run (None: it ended another way)."""
        return self.wait().exit_code

    def stop(self) -> None:
        """End the run and wait for its thread."""
        self.machine.stop()
        if self._thread is not None:
            self._thread.join()
