"""The virtio devices a board carries, made from the machine description's records
(:mod:`xinterface.spec`): disks, network interfaces, the entropy device and the console. The
boards put them behind their transport: virtio-mmio on microvm, virtio-pci on pc."""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..devices.output import Output
from ..errors import XInterfaceError
from ..spec import IPXE_VIRTIO_ROM, Disk, Net, VhostUser
from ..virtio.blk import VirtioBlk
from ..virtio.console import VirtioConsole
from ..virtio.device import VirtioDevice
from ..virtio.net import TapBackend, VirtioNet
from ..virtio.net.device import parse_mac
from ..virtio.rng import VirtioRng

FIRST_MAC = bytes.fromhex("525400123456")  # QEMU's first NIC; the next ones count up

__all__ = ["FIRST_MAC", "IPXE_VIRTIO_ROM", "Disk", "Net", "VirtioSet", "make_devices"]


@dataclass
class VirtioSet:
    """The devices made for a board, in transport order, and the ROMs of the nets."""

    devices: list[VirtioDevice] = field(default_factory=list)
    roms: dict[int, bytes] = field(default_factory=dict)   # index in devices -> option ROM
    console: VirtioConsole | None = None

    def close(self) -> None:
        for device in self.devices:
            close = getattr(device, "close", None)
            if close is not None:
                close()


def make_devices(*, disks: Sequence[Disk] = (), nets: Sequence[Net] = (), rng: bool = False,
                 console: Output | None = None, virtio_console: bool = False,
                 iothread: bool = False, vhost_user: Sequence[VhostUser] = ()) -> VirtioSet:
    """The devices in board order: disks (then vhost-user disks), nets (then vhost-user
    nets), rng (then vhost-user ones), console. Everything opened so far is closed again if
    one fails (a missing image, a TAP we may not open, a backend not listening)."""
    made = VirtioSet()

    def served(kind: str, first_mac: int = 0) -> None:
        from ..vhost_user.device import KINDS, VhostUserNet

        for i, vu in enumerate(vhost_user):
            if vu.kind != kind:
                continue
            where = f"vhost_user[{i}]"
            if kind == "net":
                mac = (parse_mac(vu.mac) if vu.mac else
                       (int.from_bytes(FIRST_MAC, "big") + first_mac).to_bytes(6, "big"))
                first_mac += 1
                made.devices.append(VhostUserNet(vu.socket, mac=mac, reconnect=vu.reconnect,
                                                 argument=where))
            else:
                made.devices.append(KINDS[kind](vu.socket, reconnect=vu.reconnect,
                                                argument=where))

    try:
        for disk in disks:
            made.devices.append(VirtioBlk(disk.path, readonly=disk.readonly, iothread=iothread))
        served("blk")
        for i, net in enumerate(nets):
            rom = _read_rom(IPXE_VIRTIO_ROM if net.rom == "ipxe" else net.rom) if net.rom else None
            mac = net.mac or (int.from_bytes(FIRST_MAC, "big") + i).to_bytes(6, "big")
            if rom is not None:
                made.roms[len(made.devices)] = rom
            made.devices.append(VirtioNet(TapBackend(net.tap), mac=mac, iothread=iothread))
        served("net", len(nets))
        if rng:
            made.devices.append(VirtioRng(iothread=iothread))
        served("rng")
        if virtio_console:
            made.console = VirtioConsole(console)
            made.devices.append(made.console)
    except BaseException:
        made.close()
        raise
    return made


def _read_rom(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise XInterfaceError(exc.errno or errno.ENOENT, f"option ROM {path}: {exc.strerror}",
                              argument="rom", value=path) from None
