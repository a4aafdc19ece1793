"""The pc board: the microvm devices plus PCI configuration space with the i440FX host bridge
and the PIIX3 ISA bridge of QEMU's ``pc`` machine, for firmware built for it (SeaBIOS's
``bios.bin``), and virtio-pci disks in the slots after them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..delivery import Delivery
from ..devices.output import Output
from ..devices.pci import PciHost
from ..devices.pci.irq import IntxLine
from ..machine import Machine
from ..virtio.blk import VirtioBlk
from ..virtio.pci import VirtioPci
from .microvm import Platform, attach_microvm

FIRST_VIRTIO_SLOT = 3  # 00:00.0 host bridge, 00:01.0 ISA bridge, 00:02.0 left for a display


@dataclass(frozen=True)
class Disk:
    """A raw image for a virtio-blk disk: ``FILE[,readonly]`` on the command line."""

    path: str
    readonly: bool = False

    @classmethod
    def parse(cls, spec: str) -> Disk:
        path, _, options = spec.partition(",")
        flags = {o.strip() for o in options.split(",") if o.strip()}
        unknown = flags - {"readonly", "ro"}
        if unknown or not path:
            raise ValueError(f"--disk {spec!r}: expected FILE or FILE,readonly")
        return cls(path, bool(flags))


def attach_pc(machine: Machine, *, debugcon: Output | None = None,
              serial: Output | None = None, posted_debugcon: bool = False,
              disks: Sequence[Disk] = (), notify: Delivery = Delivery.SYNC) -> Platform:
    """Attach the pc board's devices to ``machine`` (``Machine.close()`` ends them).

    Each disk becomes a virtio-blk behind a transitional virtio-pci function, from slot 3
    on, its INTA# routed through the PIIX3; the first disk is first in ``bootorder``.
    """
    platform = attach_microvm(machine, debugcon=debugcon, serial=serial,
                              posted_debugcon=posted_debugcon, acpi=False)
    host = platform.pci = PciHost()
    bootorder = []
    transports: list[VirtioPci] = []
    try:
        for i, disk in enumerate(disks):
            slot = FIRST_VIRTIO_SLOT + i
            device = VirtioBlk(disk.path, readonly=disk.readonly)
            transport = VirtioPci(device, intx=IntxLine(platform.intf, host, slot),
                                  notify=notify)
            host.add(slot, transport.function)
            platform.intf.on_release(device.close)
            transport.attach(platform.intf)
            transports.append(transport)
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
