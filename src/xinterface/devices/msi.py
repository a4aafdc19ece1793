"""The VM's GSI routing table with MSI routes: one table per VM (``KVM_SET_GSI_ROUTING``
replaces it whole), shared by every device that signals message interrupts.

KVM's in-kernel irqchip starts with a default table: GSIs 0-15 to the IOAPIC pin of the
same number and to the PIC (master for 0-7, slave for 8-15, pin GSI mod 8), 16-23 to the
IOAPIC only (``default_routing`` in arch/x86/kvm). Setting a table replaces that, so every
table written here lists those entries first, then one MSI entry per GSI given out (from 24
up) that has a message. An irqfd bound to a GSI injects that GSI's message without an exit;
a GSI given out without a message routes nowhere (an irqfd on it injects nothing).
"""

from __future__ import annotations

import errno
import threading

from ..errors import XInterfaceError
from ..interface import XInterface
from ..kvm import uapi

IRQCHIP_GSIS = 24              # the IOAPIC's pins; the PIC's are the first 16 of them
FIRST_MSI_GSI = IRQCHIP_GSIS
MAX_ROUTES = 4096              # KVM_MAX_IRQ_ROUTES (x86): GSIs are below it
# x86 MSI address (Intel SDM vol. 3, 11.11.1): 0xFEEx_xxxx reaches the local APICs; a
# message written elsewhere is a plain memory write, which no interrupt route models.
MSI_ADDRESS_MASK = 0xFFF00000
MSI_ADDRESS_BASE = 0xFEE00000

Message = tuple[int, int, int]   # address_lo, address_hi, data


def is_apic_message(address_lo: int, address_hi: int) -> bool:
    """Whether a message to this address is an interrupt (the local APICs' window)."""
    return address_hi == 0 and address_lo & MSI_ADDRESS_MASK == MSI_ADDRESS_BASE


def _irqchip(gsi: int, chip: int, pin: int) -> uapi.kvm_irq_routing_entry:
    entry = uapi.kvm_irq_routing_entry(gsi=gsi, type=uapi.KVM_IRQ_ROUTING_IRQCHIP)
    entry.u.irqchip.irqchip = chip
    entry.u.irqchip.pin = pin
    return entry


def default_routes() -> list[uapi.kvm_irq_routing_entry]:
    """The in-kernel irqchip's own table, as KVM sets it up."""
    entries = []
    for gsi in range(IRQCHIP_GSIS):
        entries.append(_irqchip(gsi, uapi.KVM_IRQCHIP_IOAPIC, gsi))
        if gsi < 16:
            pic = uapi.KVM_IRQCHIP_PIC_MASTER if gsi < 8 else uapi.KVM_IRQCHIP_PIC_SLAVE
            entries.append(_irqchip(gsi, pic, gsi % 8))
    return entries


class MsiRoutes:
    """``routes = MsiRoutes(intf)``; ``gsi = routes.allocate()``; ``routes.set(gsi,
    (address_lo, address_hi, data))`` points it at a message, ``routes.set(gsi, None)`` at
    nothing. Each change that alters the table writes it to KVM, under one lock so the
    kernel's table is always the last one made. ``writes``: how many tables were written."""

    def __init__(self, intf: XInterface) -> None:
        if not intf.vm.irqchip:
            raise XInterfaceError(errno.EOPNOTSUPP, "MSI routes need an in-kernel irqchip: "
                                  "Machine(irqchip=True)", argument="intf", value=intf)
        if not intf.vm.has_cap(uapi.KVM_CAP_IRQ_ROUTING):
            raise XInterfaceError(errno.EOPNOTSUPP, "the kernel lacks KVM_CAP_IRQ_ROUTING",
                                  argument="intf", value=intf)
        self._intf = intf
        self._lock = threading.Lock()
        self._messages: dict[int, Message | None] = {}
        self._next = FIRST_MSI_GSI
        self.writes = 0

    def allocate(self) -> int:
        """A GSI of its own, routed nowhere yet. ``ENOSPC`` past KVM's last GSI."""
        with self._lock:
            if self._next >= MAX_ROUTES:
                raise XInterfaceError(errno.ENOSPC, f"no GSI left for an MSI route (KVM has "
                                      f"{MAX_ROUTES})", argument="gsi", value=self._next)
            gsi = self._next
            self._next += 1
            self._messages[gsi] = None
            return gsi

    def message(self, gsi: int) -> Message | None:
        return self._messages.get(gsi)

    def set(self, gsi: int, message: Message | None) -> None:
        """Route ``gsi`` to ``message`` (None: to nothing); the table is written if that
        changed it. A GSI not given out here: ``EINVAL``; a table KVM refuses: its errno,
        and the route stays what it was."""
        with self._lock:
            if gsi not in self._messages:
                raise XInterfaceError(errno.EINVAL, f"gsi {gsi} was not allocated here",
                                      argument="gsi", value=gsi)
            old = self._messages[gsi]
            if old == message:
                return
            self._messages[gsi] = message
            try:
                self._write()
            except BaseException:
                self._messages[gsi] = old   # the kernel's table is still the one before
                raise

    def _write(self) -> None:
        entries = default_routes()
        for gsi, message in sorted(self._messages.items()):
            if message is None:
                continue
            entry = uapi.kvm_irq_routing_entry(gsi=gsi, type=uapi.KVM_IRQ_ROUTING_MSI)
            entry.u.msi.address_lo, entry.u.msi.address_hi, entry.u.msi.data = message
            entries.append(entry)
        vm = self._intf.vm
        if vm.closed:
            return
        try:
            vm.vmfd.set_gsi_routing(entries)
        except OSError as exc:
            raise XInterfaceError(exc.errno or errno.EINVAL, f"KVM_SET_GSI_ROUTING: "
                                  f"{exc.strerror}", argument="routes",
                                  value=len(entries)) from None
        self.writes += 1
