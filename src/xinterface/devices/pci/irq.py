"""PCI INTx: a function's interrupt pin as a level-triggered line of the in-kernel irqchip,
routed the way the PIIX3's PIRQ registers say at the moment it is asserted."""

from __future__ import annotations

import threading

from ...interface import XInterface
from ..interrupt import InterruptLine
from .host import PciHost


class IntxLine(InterruptLine):
    """``set_level(True)`` asserts INTA# (or ``pin``) of ``slot``, ``set_level(False)``
    drops it.

    The line stays asserted until dropped (PCI 3.0, 2.2.6: INTx is level-sensitive), which
    ``XInterface.set_irq`` gives. Without an in-kernel irqchip (firmware that polls), or
    while the PIRQ link is not routed, nothing is raised.
    """

    def __init__(self, intf: XInterface, host: PciHost, slot: int, pin: int = 1) -> None:
        self._intf = intf
        self._host = host
        self.slot = slot
        self.pin = pin
        self._gsi: int | None = None
        self._lock = threading.Lock()
        self.raised = 0

    def trigger(self) -> None:
        pass  # INTx is a level: set_level says it

    def set_level(self, level: bool) -> None:
        if not self._intf.vm.irqchip:
            return
        with self._lock:
            if level:
                gsi = self._host.pirq_gsi(self.slot, self.pin)
                if gsi is None or gsi == self._gsi:
                    return
                if self._gsi is not None:
                    self._intf.set_irq(self._gsi, False)
                self._gsi = gsi
                self._intf.set_irq(gsi, True)
                self.raised += 1
            elif self._gsi is not None:
                self._intf.set_irq(self._gsi, False)
                self._gsi = None
