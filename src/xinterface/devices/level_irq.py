"""Level-triggered interrupt lines through resampling irqfds, for devices whose interrupt
stays asserted while they have a reason pending (virtio-mmio: while InterruptStatus is
non-zero, §4.2.2).

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

from ..interface import XInterface, XIrqfd
from .interrupt import InterruptLine


class ResamplingIrqfd(InterruptLine):
    """A level-triggered line (made by :meth:`LevelIrqfds.line`): the level the device sets
    is kept here and read again at each EOI, when KVM has lowered the line."""

    def __init__(self, irqfd: XIrqfd) -> None:
        self.irqfd = irqfd
        self.gsi = irqfd.gsi
        self.level = False

    def set_level(self, level: bool) -> None:
        self.level = level
        if level:
            self._raise()

    def trigger(self) -> None:
        # KVM holds the line until the EOI; a new event while it is up changes nothing,
        # and one after the EOI but before the resample is read raises it again at once.
        if self.level:
            self._raise()

    def resample(self) -> None:
        """The guest's EOI lowered the line: up again if a reason is still pending."""
        if self.level:
            self._raise()

    def _raise(self) -> None:
        if self.irqfd.fd >= 0:
            self.irqfd.trigger()

    def __repr__(self) -> str:
        return f"ResamplingIrqfd(gsi {self.gsi})"


class LevelIrqfds:
    """``lines = LevelIrqfds(intf)``; ``lines.line(gsi)`` gives a level-triggered
    :class:`~.interrupt.InterruptLine` on ``gsi``. :meth:`close` (or the interface's
    release) ends them."""

    def __init__(self, intf: XInterface) -> None:
        self._intf = intf
        self._lines: dict[int, ResamplingIrqfd] = {}
        self._epoll = select.epoll()
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._epoll.register(self._wake, select.EPOLLIN)
        self._thread: threading.Thread | None = None
        self._closing = False
        self.resamples = 0

    def line(self, gsi: int) -> ResamplingIrqfd:
        """A new resampling irqfd on ``gsi``, watched by this group's thread."""
        line = ResamplingIrqfd(self._intf.irqfd(gsi, resample=True))
        self._lines[line.irqfd.resamplefd] = line
        self._epoll.register(line.irqfd.resamplefd, select.EPOLLIN)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="level-irqfd", daemon=True)
            self._thread.start()
        return line

    def _run(self) -> None:
        while not self._closing:
            for fd, _ in self._epoll.poll():
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(fd)
                line = self._lines.get(fd)
                if line is None:
                    continue
                self.resamples += 1
                line.resample()

    def close(self) -> None:
        """Stop watching and unbind the irqfds; harmless twice."""
        if self._closing:
            return
        self._closing = True
        os.eventfd_write(self._wake, 1)
        if self._thread is not None:
            self._thread.join()
        for line in self._lines.values():
            line.irqfd.deassign()
        self._lines.clear()
        self._epoll.close()
        os.close(self._wake)
