"""The pc board: the microvm devices plus PCI configuration space with the i440FX host bridge
and the PIIX3 ISA bridge of QEMU's ``pc`` machine, for firmware built for it (SeaBIOS's
``bios.bin``)."""

from __future__ import annotations

from ..devices.output import Output
from ..devices.pci import PciHost
from ..machine import Machine
from .microvm import Platform, attach_microvm


def attach_pc(machine: Machine, *, debugcon: Output | None = None,
              serial: Output | None = None, posted_debugcon: bool = False) -> Platform:
    """Attach the pc board's devices to ``machine`` (``Machine.close()`` ends them)."""
    # No ACPI tables: a pc guest expects a full FADT with the PIIX4's PM blocks, not the
    # hardware-reduced one of microvm.
    platform = attach_microvm(machine, debugcon=debugcon, serial=serial,
                              posted_debugcon=posted_debugcon, acpi=False)
    platform.pci = PciHost()
    platform.pci.attach(platform.intf)
    return platform
