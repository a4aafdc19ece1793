"""The pc board: the microvm devices plus PCI configuration space with the i440FX host bridge
and the PIIX3 ISA bridge of QEMU's ``pc`` machine, for firmware built for it (SeaBIOS's
``bios.bin``), and virtio-pci devices (disks, network interfaces, rng, console) in the slots
after them."""

from __future__ import annotations

from collections.abc import Sequence

from ..delivery import Delivery
from ..devices.msi import MsiRoutes
from ..devices.output import Output
from ..devices.pci import PciHost
from ..devices.pci.irq import IntxLine
from ..devices.pci.rom import rom_for
from ..runner.machine import Machine
from ..spec import Disk, Net, VhostUser
from ..virtio.blk import VirtioBlk
from ..virtio.pci import VIRTIO_PCI_VENDOR, VirtioPci, pci_device_id
from .microvm import attach_microvm
from .platform import Platform
from .virtio import make_devices

FIRST_VIRTIO_SLOT = 3  # 00:00.0 host bridge, 00:01.0 ISA bridge, 00:02.0 left for a display

__all__ = ["FIRST_VIRTIO_SLOT", "Disk", "Net", "attach_pc"]


def attach_pc(machine: Machine, *, debugcon: Output | None = None,
              serial: Output | None = None, posted_debugcon: bool = False,
              disks: Sequence[Disk] = (), nets: Sequence[Net] = (), rng: bool = False,
              virtio_console: bool = False, doorbells: Delivery = Delivery.SYNC,
              sercon: bool = False, vhost_user: Sequence[VhostUser] = ()) -> Platform:
    """Attach the pc board's devices to ``machine`` (``Machine.close()`` ends them).

    Each virtio device (disks, then nets, rng, the console) sits behind a transitional
    virtio-pci function, from slot 3 on, its INTA# routed through the PIIX3 and, with the
    in-kernel irqchip, MSI-X vectors routed through KVM's GSI routing table (a driver that
    enables MSI-X uses those instead of INTA#); the first disk is first in ``bootorder``.
    ``vhost_user``: devices served by backend processes
    (:mod:`xinterface.vhost_user.device`), after the in-process ones of their type.
    A net's ``rom`` becomes its function's expansion ROM, its
    header's IDs set to the function's (:func:`~xinterface.devices.pci.rom.rom_for`).
    ``sercon``: as :func:`~xinterface.boards.microvm.attach_microvm`.
    """
    made = make_devices(disks=disks, nets=nets, rng=rng, console=serial,
                        virtio_console=virtio_console, vhost_user=vhost_user)
    try:
        platform = attach_microvm(machine, debugcon=debugcon, serial=serial,
                                  posted_debugcon=posted_debugcon, acpi=False, sercon=sercon)
    except BaseException:
        made.close()
        raise
    platform.intf.on_release(made.close)
    platform.console = made.console
    host = platform.pci = PciHost()
    msi = MsiRoutes(platform.intf) if platform.intf.vm.irqchip else None
    bootorder = []
    transports: list[VirtioPci] = []
    try:
        for i, device in enumerate(made.devices):
            slot = FIRST_VIRTIO_SLOT + i
            rom = made.roms.get(i)
            if rom is not None:
                rom = rom_for(rom, VIRTIO_PCI_VENDOR, pci_device_id(device.device_id))
            transport = VirtioPci(device, irq=IntxLine(platform.intf, host, slot), msi=msi,
                                  doorbells=doorbells, rom=rom)
            host.add(slot, transport.function)
            transport.attach(platform.intf)
            transports.append(transport)
            if device.device_id == VirtioBlk.device_id:   # in-process or vhost-user
                # SeaBIOS matches "/pci@i0cf8/*@<slot>" against these (src/boot.c, glob_prefix).
                bootorder.append(f"/pci@i0cf8/scsi@{slot:x}/disk@0,0")
    except BaseException:
        for transport in transports:
            transport.detach()
        raise
    platform.virtio.extend(transports)
    if bootorder:
        platform.fw_cfg.add_file("bootorder", ("\n".join(bootorder) + "\n").encode() + b"\0")
    host.attach(platform.intf)
    return platform
