"""The machine description: what a VM is made of, as plain data.

A :class:`MachineSpec` is built by a front end (the command line parses ``--disk``/``--net``
into it), checked here (:meth:`MachineSpec.validate`, the only place its rules are written)
and built by :func:`xinterface.build.build`. It holds no open file and no stream, so it turns
into JSON and back (:meth:`MachineSpec.to_json`, :meth:`MachineSpec.from_json`): what a
snapshot records and a restore rebuilds.

The records are NamedTuples, not dataclasses: ``dataclasses`` imports ``inspect``, and
``xinterface run`` describes its machine here too (docs/performance.md).
"""

from __future__ import annotations

import errno
from typing import Any, NamedTuple, NoReturn

from .errors import XInterfaceError

BOARD_NAMES = ("microvm", "pc")
NOTIFY_NAMES = ("sync", "posted", "eventfd")   # xinterface.delivery.Delivery's values
# Where Debian's ipxe-qemu puts iPXE's virtio-net option ROM (``rom=ipxe``).
IPXE_VIRTIO_ROM = "/usr/lib/ipxe/qemu/pxe-virtio.rom"
# SeaBIOS keeps its data in the PC's conventional memory: the EBDA just below 640 KiB (its e820
# always lists 0-0x9fc00 as RAM) and its init code, relocated to the top of RAM below 1 MiB.
# Measured with Debian's bios-microvm.bin 1.16.2: 544 KiB stops at "No space for init
# relocation." and spins until the timeout; 576 KiB reaches the boot attempt with its EBDA on
# no memory at all; from 640 KiB up everything it uses is RAM.
MIN_FIRMWARE_RAM = 640 << 10


class Disk(NamedTuple):
    """A raw image for a virtio-blk disk."""

    path: str
    readonly: bool = False


class Net(NamedTuple):
    """A virtio-net interface on an existing TAP. ``mac`` None: the board counts up from
    QEMU's first NIC's. ``rom``: an option ROM for the pc board's PCI function (``ipxe``:
    Debian's iPXE, :data:`IPXE_VIRTIO_ROM`)."""

    tap: str
    mac: str | None = None
    rom: str | None = None


VHOST_USER_KINDS = ("blk", "net", "rng")


class VhostUser(NamedTuple):
    """A virtio device of ``kind`` (blk, net, rng) served by a vhost-user backend process
    listening at ``socket``. ``reconnect``: seconds between attempts to connect again once
    the backend is lost (None: never). ``mac``: a net's MAC, as :class:`Net`'s."""

    kind: str
    socket: str
    reconnect: float | None = None
    mac: str | None = None


class Boot(NamedTuple):
    """What the machine starts: ``firmware`` from the reset vector, or a Linux ``kernel``
    loaded directly with its ``initrd`` and command line (``cmdline``, as the kernel gets it).
    Neither: the caller loads the guest itself (``xinterface run``'s image)."""

    firmware: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str = ""


class Consoles(NamedTuple):
    """The consoles besides the machine's own ports. ``uart``: COM1 (every board has it; a
    machine without a board has it only when asked). ``posted_debugcon``: the firmware's debug
    console through KVM's coalesced ring. ``virtio_console``: Linux's hvc0. ``sercon``: COM1
    is the firmware's screen (SeaBIOS's ``etc/sercon-port``)."""

    uart: bool = True
    posted_debugcon: bool = False
    virtio_console: bool = False
    sercon: bool = False


class MachineSpec(NamedTuple):
    """A whole machine. ``board`` None: no board, the bare machine of ``xinterface run``
    (its debug ports, and COM1 if ``consoles.uart``). ``cpu``: a CPU template's name
    (:mod:`xinterface.loader.cpuid`), None for KVM's own CPUID. ``doorbells``: how the virtio
    doorbells are delivered (:class:`xinterface.delivery.Delivery`'s value)."""

    memory: int = 64 << 20
    vcpus: int = 1
    cpu: str | None = None
    board: str | None = "microvm"
    irqchip: bool = True
    strict: bool = False
    boot: Boot = Boot()
    disks: tuple[Disk, ...] = ()
    nets: tuple[Net, ...] = ()
    rng: bool = False
    vhost_user: tuple[VhostUser, ...] = ()
    consoles: Consoles = Consoles()
    doorbells: str = "sync"

    def validate(self) -> MachineSpec:
        """``self`` if it describes a machine that can be built, else ``XInterfaceError``
        (EINVAL) naming the field (``boot.initrd``, ``nets[1].mac``)."""
        _check_types(self)
        boot = self.boot
        if self.board is not None and self.board not in BOARD_NAMES:
            _bad("board", self.board, f"board {self.board!r} is not one of "
                 f"{', '.join(BOARD_NAMES)}")
        if self.board is not None and (boot.firmware is None) == (boot.kernel is None):
            _bad("boot", boot, "a board boots exactly one of firmware and a kernel")
        if self.board is None and boot.kernel is not None:
            _bad("boot.kernel", boot.kernel, "a kernel needs a board")
        if boot.initrd is not None and boot.kernel is None:
            _bad("boot.initrd", boot.initrd, "an initrd needs a kernel")
        if boot.cmdline and boot.kernel is None:
            _bad("boot.cmdline", boot.cmdline, "a command line needs a kernel")
        if self.memory <= 0:
            _bad("memory", self.memory, f"{self.memory} bytes is no memory at all")
        if boot.firmware is not None and self.memory < MIN_FIRMWARE_RAM:
            _bad("memory", self.memory, f"{self.memory >> 10} KiB is too little for the "
                 f"firmware: SeaBIOS needs {MIN_FIRMWARE_RAM >> 10}K or more")
        if self.vcpus < 1:
            _bad("vcpus", self.vcpus, f"{self.vcpus} vCPUs: a machine has 1 or more")
        if self.cpu is not None:
            from .loader.cpuid import TEMPLATES

            if self.cpu not in TEMPLATES:
                _bad("cpu", self.cpu, f"CPU template {self.cpu!r} is not one of "
                     f"{', '.join(TEMPLATES)}")
        if self.doorbells not in NOTIFY_NAMES:
            _bad("doorbells", self.doorbells, f"doorbells {self.doorbells!r} is not one of "
                 f"{', '.join(NOTIFY_NAMES)}")
        for i, disk in enumerate(self.disks):
            check_disk(disk, f"disks[{i}]")
        for i, net in enumerate(self.nets):
            check_net(net, f"nets[{i}]")
        for i, vu in enumerate(self.vhost_user):
            check_vhost_user(vu, f"vhost_user[{i}]")
        if self.board is None:
            for name, present in (("disks", self.disks), ("nets", self.nets),
                                  ("vhost_user", self.vhost_user),
                                  ("rng", self.rng),
                                  ("consoles.virtio_console", self.consoles.virtio_console),
                                  ("consoles.sercon", self.consoles.sercon),
                                  ("boot.firmware", boot.firmware is not None)):
                if present:
                    _bad(name, present, f"{name} needs a board")
        elif not self.consoles.uart:
            _bad("consoles.uart", False, f"the {self.board} board always has COM1")
        return self

    def to_json(self) -> dict[str, Any]:
        """The description as JSON's types (lists for the tuples), for ``json.dumps``."""
        data = self._asdict()
        data["boot"] = self.boot._asdict()
        data["consoles"] = self.consoles._asdict()
        data["disks"] = [d._asdict() for d in self.disks]
        data["nets"] = [n._asdict() for n in self.nets]
        data["vhost_user"] = [v._asdict() for v in self.vhost_user]
        return data

    @classmethod
    def from_json(cls, data: object) -> MachineSpec:
        """The description :meth:`to_json` gave (``json.loads``'s result), validated; a
        missing field takes its default, an unknown or mistyped one is EINVAL naming it."""
        fields = _record(data, "", cls)
        for name, record in (("boot", Boot), ("consoles", Consoles)):
            if name in fields:
                fields[name] = record(**_record(fields[name], f"{name}.", record))
        for name, item in (("disks", Disk), ("nets", Net), ("vhost_user", VhostUser)):
            if name in fields:
                items = fields[name]
                if not isinstance(items, list):
                    _bad(name, items, f"{name} is a list")
                fields[name] = tuple(item(**_record(x, f"{name}[{i}].", item))
                                     for i, x in enumerate(items))
        return cls(**fields).validate()


def check_disk(disk: Disk, where: str = "disk") -> None:
    """:meth:`MachineSpec.validate`'s rules for one disk, ``where`` naming it."""
    if not disk.path:
        _bad(f"{where}.path", disk.path, "a disk needs an image's path")


def check_net(net: Net, where: str = "net") -> None:
    """:meth:`MachineSpec.validate`'s rules for one network interface, ``where`` naming it."""
    if not net.tap:
        _bad(f"{where}.tap", net.tap, "a network interface needs a TAP's name")
    if net.mac is not None:
        from .virtio.net.device import parse_mac

        try:
            parse_mac(net.mac)
        except XInterfaceError as exc:
            exc.argument = f"{where}.mac"   # the MAC's own message, the field's name
            raise
    if net.rom is not None and not net.rom:
        _bad(f"{where}.rom", net.rom, "an option ROM needs a file's path")


def check_vhost_user(vu: VhostUser, where: str = "vhost_user") -> None:
    """:meth:`MachineSpec.validate`'s rules for one vhost-user device, ``where`` naming it."""
    if vu.kind not in VHOST_USER_KINDS:
        _bad(f"{where}.kind", vu.kind, f"vhost-user device {vu.kind!r} is not one of "
             f"{', '.join(VHOST_USER_KINDS)}")
    if not vu.socket:
        _bad(f"{where}.socket", vu.socket, "a vhost-user device needs a socket's path")
    if vu.reconnect is not None and not vu.reconnect > 0:
        _bad(f"{where}.reconnect", vu.reconnect, "reconnect is a positive number of seconds")
    if vu.mac is not None:
        if vu.kind != "net":
            _bad(f"{where}.mac", vu.mac, "only a net has a MAC")
        check_net(Net("vhost-user", vu.mac), where)


# Each field's JSON type(s); a record's fields are checked after it is built from them.
_TYPES: dict[str, tuple[type, ...]] = {
    "memory": (int,), "vcpus": (int,), "cpu": (str, type(None)), "board": (str, type(None)),
    "irqchip": (bool,), "strict": (bool,), "rng": (bool,), "doorbells": (str,),
    "boot.firmware": (str, type(None)), "boot.kernel": (str, type(None)),
    "boot.initrd": (str, type(None)), "boot.cmdline": (str,),
    "consoles.uart": (bool,), "consoles.posted_debugcon": (bool,),
    "consoles.virtio_console": (bool,), "consoles.sercon": (bool,),
    "disk.path": (str,), "disk.readonly": (bool,),
    "net.tap": (str,), "net.mac": (str, type(None)), "net.rom": (str, type(None)),
    "vhost_user.kind": (str,), "vhost_user.socket": (str,),
    "vhost_user.reconnect": (int, float, type(None)), "vhost_user.mac": (str, type(None)),
}


_ITEM_KEYS = {"disks": "disk", "nets": "net", "vhost_user": "vhost_user"}


def _check_types(spec: MachineSpec) -> None:
    def check(name: str, key: str, value: object) -> None:
        kinds = _TYPES[key]
        # bool is an int to Python, never to a description: memory=True is a mistake.
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            _bad(name, value, f"{name} is {' or '.join(_type_name(k) for k in kinds)}, not "
                 f"{_type_name(type(value))}")

    for key in ("memory", "vcpus", "cpu", "board", "irqchip", "strict", "rng", "doorbells"):
        check(key, key, getattr(spec, key))
    for part, value in (("boot", spec.boot), ("consoles", spec.consoles)):
        if not isinstance(value, Boot if part == "boot" else Consoles):
            _bad(part, value, f"{part} is a {part.capitalize()} record")
        for key, field in value._asdict().items():
            check(f"{part}.{key}", f"{part}.{key}", field)
    records: tuple[tuple[str, tuple[Any, ...], type[Any]], ...] = (
        ("disks", spec.disks, Disk), ("nets", spec.nets, Net),
        ("vhost_user", spec.vhost_user, VhostUser))
    for name, items, record in records:
        if not isinstance(items, tuple):
            _bad(name, items, f"{name} is a tuple of {record.__name__} records")
        for i, item in enumerate(items):
            if not isinstance(item, record):
                _bad(f"{name}[{i}]", item, f"{name}[{i}] is a {record.__name__} record")
            for key, field in item._asdict().items():
                check(f"{name}[{i}].{key}", f"{_ITEM_KEYS[name]}.{key}", field)


def _record(data: object, prefix: str, record: type[Any]) -> dict[str, Any]:
    """``data`` as keyword arguments of ``record``: a JSON object of its fields only."""
    where = prefix[:-1] if prefix else "spec"
    if not isinstance(data, dict):
        _bad(where, data, f"{where} is a JSON object")
    fields: tuple[str, ...] = record._fields
    unknown = sorted(set(data) - set(fields))
    if unknown:
        _bad(f"{prefix}{unknown[0]}", data[unknown[0]], f"{prefix}{unknown[0]}: no such field")
    missing = [f for f in fields if f not in data and f not in record._field_defaults]
    if missing:
        _bad(f"{prefix}{missing[0]}", None, f"{prefix}{missing[0]} is missing")
    return dict(data)


def _type_name(kind: type) -> str:
    return {type(None): "null", bool: "a boolean", int: "an integer", str: "a string"}.get(
        kind, kind.__name__)


def _bad(field: str, value: object, message: str) -> NoReturn:
    raise XInterfaceError(errno.EINVAL, message, argument=field, value=value)
