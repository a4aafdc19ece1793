"""The virtio devices a board carries, as the command line names them: disks
(``--disk FILE[,readonly]``), network interfaces (``--net tap=NAME[,mac=..][,rom=FILE]``),
the entropy device (``--rng``) and the console (``--virtio-console``). The boards put them
behind their transport: virtio-mmio on microvm, virtio-pci on pc."""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..devices.output import Output
from ..errors import XInterfaceError
from ..virtio.blk import VirtioBlk
from ..virtio.console import VirtioConsole
from ..virtio.device import VirtioDevice
from ..virtio.net import TapBackend, VirtioNet, parse_mac
from ..virtio.rng import VirtioRng

# Where Debian's ipxe-qemu puts iPXE's virtio-net option ROM (``rom=ipxe``).
IPXE_VIRTIO_ROM = "/usr/lib/ipxe/qemu/pxe-virtio.rom"
FIRST_MAC = bytes.fromhex("525400123456")  # QEMU's first NIC; the next ones count up


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


@dataclass(frozen=True)
class Net:
    """A virtio-net interface on a TAP: ``tap=NAME[,mac=52:54:00:12:34:56][,rom=FILE|ipxe]``
    on the command line. ``rom`` is an option ROM for the pc board's PCI function (``ipxe``:
    Debian's iPXE, :data:`IPXE_VIRTIO_ROM`)."""

    tap: str
    mac: str | None = None
    rom: str | None = None

    @classmethod
    def parse(cls, spec: str) -> Net:
        options: dict[str, str] = {}
        for part in spec.split(","):
            key, sep, value = part.partition("=")
            if not sep or not value or key.strip() in options:
                raise ValueError(f"--net {spec!r}: expected tap=NAME[,mac=MAC][,rom=FILE]")
            options[key.strip()] = value.strip()
        unknown = set(options) - {"tap", "mac", "rom"}
        if unknown or "tap" not in options:
            raise ValueError(f"--net {spec!r}: expected tap=NAME[,mac=MAC][,rom=FILE]"
                             + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else ""))
        if "mac" in options:
            try:
                parse_mac(options["mac"])
            except XInterfaceError as exc:
                raise ValueError(f"--net {spec!r}: {exc.strerror}") from None
        rom = options.get("rom")
        return cls(options["tap"], options.get("mac"), IPXE_VIRTIO_ROM if rom == "ipxe" else rom)


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
                 iothread: bool = False) -> VirtioSet:
    """The devices in board order: disks, nets, rng, console. Everything opened so far is
    closed again if one fails (a missing image, a TAP we may not open)."""
    made = VirtioSet()
    try:
        for disk in disks:
            made.devices.append(VirtioBlk(disk.path, readonly=disk.readonly, iothread=iothread))
        for i, net in enumerate(nets):
            rom = _read_rom(IPXE_VIRTIO_ROM if net.rom == "ipxe" else net.rom) if net.rom else None
            mac = net.mac or (int.from_bytes(FIRST_MAC, "big") + i).to_bytes(6, "big")
            if rom is not None:
                made.roms[len(made.devices)] = rom
            made.devices.append(VirtioNet(TapBackend(net.tap), mac=mac, iothread=iothread))
        if rng:
            made.devices.append(VirtioRng(iothread=iothread))
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
