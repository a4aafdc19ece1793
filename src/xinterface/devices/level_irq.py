"""Level-triggered interrupt lines through irqfds, for devices whose interrupt stays asserted
while they have a reason pending (virtio-mmio: while InterruptStatus is non-zero, §4.2.2).

A plain irqfd pulses its line (KVM raises then lowers it): on a level-triggered IOAPIC pin
a second pulse that comes while the first is still being served (remote IRR set) is lost.
A *resampling* irqfd (``KVM_IRQFD_FLAG_RESAMPLE``) holds the line up instead; at the
guest's EOI KVM lowers it and signals the resample eventfd, and the line is raised again
if the device still has a reason pending. That is level-triggered behaviour with one
eventfd write per interrupt and no exit: what QEMU does for its microvm's virtio-mmio lines.
One thread watches the resample eventfds of every line of a board.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Callable

from ..xinterface import XInterface, XIrqfd


class LevelIrqfds:
    """``lines = LevelIrqfds(intf)``; ``raise_line = lines.line(gsi, pending)`` gives the
    callable a device calls when it wants an interrupt; ``pending()`` says whether it still
    does (read at each EOI). :meth:`close` (or the interface's release) ends them."""

    def __init__(self, intf: XInterface) -> None:
        self._intf = intf
        self._lines: dict[int, tuple[XIrqfd, Callable[[], bool]]] = {}
        self._epoll = select.epoll()
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._epoll.register(self._wake, select.EPOLLIN)
        self._thread: threading.Thread | None = None
        self._closing = False
        self.resamples = 0

    def line(self, gsi: int, pending: Callable[[], bool]) -> Callable[[], None]:
        irqfd = self._intf.irqfd(gsi, resample=True)
        self._lines[irqfd.resamplefd] = (irqfd, pending)
        self._epoll.register(irqfd.resamplefd, select.EPOLLIN)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="level-irqfd", daemon=True)
            self._thread.start()
        return irqfd.trigger

    def _run(self) -> None:
        while not self._closing:
            for fd, _ in self._epoll.poll():
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(fd)
                entry = self._lines.get(fd)
                if entry is None:
                    continue
                irqfd, pending = entry
                self.resamples += 1
                if pending() and irqfd.fd >= 0:
                    irqfd.trigger()

    def close(self) -> None:
        """Stop watching and unbind the irqfds; harmless twice."""
        if self._closing:
            return
        self._closing = True
        os.eventfd_write(self._wake, 1)
        if self._thread is not None:
            self._thread.join()
        for irqfd, _ in self._lines.values():
            irqfd.deassign()
        self._lines.clear()
        self._epoll.close()
        os.close(self._wake)
