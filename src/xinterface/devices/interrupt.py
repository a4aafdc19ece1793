"""The interrupt interface devices are handed: one line, edge- or level-triggered.

A device says two things to its line (the shape of Firecracker's ``VirtioInterrupt`` and
cloud-hypervisor's ``InterruptSourceGroup``, with a level added for INTx and resampling):

- :meth:`InterruptLine.trigger`: one interrupt event happened (a used buffer, a received
  byte). An edge-triggered line sends one edge for each; a level-triggered one already
  follows the level and takes nothing more from it (but a resampling irqfd, whose KVM line
  may have dropped at the guest's EOI, raises it again).
- :meth:`InterruptLine.set_level`: whether the device has a reason pending (virtio's
  interrupt status non-zero, the 16550's IIR not "none"). Called when that changes, under
  the device's lock so the line's changes keep the order of the status's. An edge-triggered
  line ignores it.

A device calls both; each implementation takes the one that its trigger mode means. The
implementations: :class:`IrqfdLine` (edge, ``KVM_IRQFD``), :class:`GsiLine` (level,
``KVM_IRQ_LINE``), the resampling irqfd of :mod:`.level_irq` (level, no exit) and PCI INTx
through the PIIX3's routing (:mod:`.pci.irq`). MSI-X is not a line: a virtio-pci function's
vectors are messages, each an irqfd on a GSI of the VM's routing table (:mod:`.msi`,
:mod:`xinterface.virtio.pci.msix`).
"""

from __future__ import annotations

import abc

from ..interface import XInterface


class InterruptLine(abc.ABC):
    """One interrupt line of a device (see the module's docstring for the contract)."""

    @abc.abstractmethod
    def trigger(self) -> None:
        """One interrupt event (an edge-triggered line sends an edge)."""

    @abc.abstractmethod
    def set_level(self, level: bool) -> None:
        """The device has a reason pending (``True``) or no longer (``False``)."""


class IrqfdLine(InterruptLine):
    """An edge-triggered line through an irqfd: each :meth:`trigger` is one eventfd write,
    which KVM turns into a raise and a drop of ``gsi`` without an exit. The irqfd lives as
    long as the interface (its release unbinds it) or until :meth:`close`."""

    def __init__(self, intf: XInterface, gsi: int) -> None:
        self.irqfd = intf.irqfd(gsi)
        self.gsi = gsi

    def trigger(self) -> None:
        self.irqfd.trigger()

    def set_level(self, level: bool) -> None:
        pass  # an edge carries no level

    def close(self) -> None:
        """Unbind the irqfd; harmless twice."""
        self.irqfd.deassign()

    def __repr__(self) -> str:
        return f"IrqfdLine(gsi {self.gsi})"


class GsiLine(InterruptLine):
    """A level-triggered line of the in-kernel irqchip driven with ``KVM_IRQ_LINE``: held
    up while the device has a reason pending. Each change is one ioctl from the thread that
    made it (the vCPU's own exit, usually)."""

    def __init__(self, intf: XInterface, gsi: int) -> None:
        self._intf = intf
        self.gsi = gsi

    def trigger(self) -> None:
        pass  # the level says it already

    def set_level(self, level: bool) -> None:
        self._intf.set_irq(self.gsi, level)

    def __repr__(self) -> str:
        return f"GsiLine(gsi {self.gsi})"


def irqfd_line(intf: XInterface, gsi: int) -> IrqfdLine | None:
    """An :class:`IrqfdLine` on ``gsi`` if the VM has an in-kernel irqchip, else None (a
    guest without one polls)."""
    return IrqfdLine(intf, gsi) if intf.vm.irqchip else None
