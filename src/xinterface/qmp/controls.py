"""What a monitor (QMP, the human monitor) can do to a running machine, written once.

:class:`Controls` maps QEMU's run control onto the run state machine
(:mod:`xinterface.runstate`): ``stop`` is :meth:`Machine.pause`, ``cont`` is
:meth:`Machine.resume`, ``system_reset`` ends the run with reason ``"reset"`` as the boards'
reset ports do, ``quit`` ends it with ``"stopped"``. Each of them, from whichever monitor,
tells every listener the event QEMU sends for it (``STOP``, ``RESUME``, ``RESET``,
``SHUTDOWN``: QEMU's qapi/run-state.json), so a QMP client sees a pause typed on the serial
console.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..runstate import RunState

if TYPE_CHECKING:
    from ..boards.platform import Platform
    from ..kvm import uapi
    from ..runner.machine import Machine, RunResult

# (event name, data) -> None
Listener = Callable[[str, dict[str, Any]], None]

# QEMU's ShutdownCause for how our runs end (qapi/run-state.json).
SHUTDOWN_CAUSES = {"reset": "guest-reset", "shutdown": "guest-shutdown", "hlt": "guest-shutdown",
                   "exit": "guest-shutdown", "error": "host-error", "timeout": "host-signal",
                   "stopped": "host-ui"}


class Controls:
    """One machine as its monitors see it. ``platform``: the board's devices (set once
    built; ``info pci`` needs its PCI host)."""

    def __init__(self, machine: Machine, platform: Platform | None = None) -> None:
        self.machine = machine
        self.platform = platform
        self.quit_requested = False
        self._lock = threading.Lock()
        # One monitor command at a time moves the run: a stop and a look at the registers
        # from two clients must not resume a guest the other one paused.
        self._moving = threading.Lock()
        self._listeners: list[Listener] = []
        self._cause: str | None = None   # a host's reason for the end, before it comes
        self._ended = False

    # --- events ---------------------------------------------------------------------------
    def listen(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def unlisten(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def emit(self, event: str, data: dict[str, Any] | None = None) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(event, data or {})

    def run_ended(self, result: RunResult | None) -> None:
        """The run is over (``result`` None: it raised): ``SHUTDOWN`` with QEMU's cause."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
            cause = self._cause
        if cause is None:
            cause = SHUTDOWN_CAUSES.get(result.reason, "none") if result else "host-error"
        self.emit("SHUTDOWN", {"guest": cause.startswith("guest-"), "reason": cause})

    # --- run control ----------------------------------------------------------------------
    def status(self) -> str:
        """QEMU's RunState name: ``prelaunch`` before the run, ``running``, ``paused``,
        ``shutdown`` once it ended."""
        state = self.machine.state
        if state in (RunState.PAUSING, RunState.PAUSED):
            return "paused"
        if state is RunState.RUNNING:
            return "running"
        if state is RunState.IDLE and not self._ended and self._cause is None:
            return "prelaunch"
        return "shutdown"

    def stop(self) -> None:
        """Pause the guest (QMP ``stop``); ``STOP`` once paused. Harmless when paused."""
        with self._moving:
            was = self.machine.state
            paused = self.machine.pause() and was is RunState.RUNNING
        if paused:
            self.emit("STOP")

    def cont(self) -> None:
        """Let a paused guest go on (QMP ``cont``); ``RESUME``."""
        with self._moving:
            resumed = self.machine.resume()
        if resumed:
            self.emit("RESUME")

    def system_reset(self) -> None:
        """Reset as the guest's own reset ports do: the run ends with reason ``"reset"``."""
        self._end("host-qmp-system-reset", "reset")
        self.emit("RESET", {"guest": False, "reason": "host-qmp-system-reset"})

    def quit(self) -> None:
        """End the run (QMP ``quit``); the command line then exits with status 0."""
        self.quit_requested = True
        self._end("host-qmp-quit", "stopped")

    def _end(self, cause: str, reason: str) -> None:
        with self._lock:
            if self._cause is None and not self._ended:
                self._cause = cause
        self.machine.request_stop(reason)

    # --- state --------------------------------------------------------------------------
    def cpus(self) -> list[dict[str, Any]]:
        """``query-cpus-fast``: each vCPU's index, host thread id and topology."""
        natives = {t.ident: t.native_id for t in threading.enumerate()}
        out = []
        for loop in self.machine.vcpus:
            tid = natives.get(loop.thread_id) if loop.thread_id is not None else None
            out.append({"cpu-index": loop.index, "qom-path": f"/machine/cpu[{loop.index}]",
                        "thread-id": tid or 0, "target": "x86_64",
                        "props": {"node-id": 0, "socket-id": loop.index, "die-id": 0,
                                  "core-id": 0, "thread-id": 0}})
        return out

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """The vCPUs out of ``KVM_RUN`` for a look at their registers (``KVM_GET_REGS`` waits
        for a vCPU's ``KVM_RUN`` to return): a running guest is paused and resumed after."""
        with self._moving:
            paused = self.machine.state is RunState.RUNNING and self.machine.pause()
            try:
                yield
            finally:
                if paused:
                    self.machine.resume()

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """The guest held still for a command that needs it so (a snapshot): a running guest
        is paused, with ``STOP``, and resumed after, with ``RESUME``, as QEMU's ``savevm``
        stops the VM around it; a paused or idle one stays as it is."""
        with self._moving:
            was = self.machine.state
            paused = was is RunState.RUNNING and self.machine.pause()
            if paused:
                self.emit("STOP")
            try:
                yield
            finally:
                if paused and self.machine.resume():
                    self.emit("RESUME")

    def registers(self, index: int) -> tuple[uapi.kvm_regs, uapi.kvm_sregs]:
        vcpu = self.machine.vcpus[index].vcpu
        return vcpu.get_regs(), vcpu.get_sregs()
