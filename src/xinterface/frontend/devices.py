"""The command line's grammar for virtio devices: ``--disk FILE[,readonly]`` and
``--net tap=NAME[,mac=MAC][,rom=FILE|ipxe]``, parsed into the machine description's records
(:mod:`xinterface.spec`). Each function returns the record or raises ``ValueError`` with the
message a user sees; the record's own rules are the description's (``check_disk``,
``check_net``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ..errors import XInterfaceError
from ..spec import IPXE_VIRTIO_ROM, Disk, Net, VhostUser, check_disk, check_net, check_vhost_user

R = TypeVar("R", Disk, Net, VhostUser)
DISK_FLAGS = ("readonly", "ro")
NET_KEYS = ("tap", "mac", "rom")
VHOST_USER = "vhost-user="
# What each option's vhost-user form takes after the socket's path.
VHOST_USER_KEYS = {"blk": ("reconnect",), "net": ("reconnect", "mac"), "rng": ("reconnect",)}
_VHOST_USER_OPTIONS = {"blk": "--disk", "net": "--net", "rng": "--rng"}


def _checked(check: Callable[[R], None], record: R, given: str) -> R:
    """``record`` once the description's own rule ``check`` accepts it; else ``ValueError``
    with the user's words (``given``) and the rule's reason."""
    try:
        check(record)
    except XInterfaceError as exc:
        raise ValueError(f"{given}: {exc.strerror}") from None
    return record


def is_vhost_user(text: str) -> bool:
    """Whether an option's value names a vhost-user backend (``vhost-user=PATH,...``)."""
    return text.startswith(VHOST_USER)


def parse_vhost_user(kind: str, text: str) -> VhostUser:
    """``vhost-user=PATH[,reconnect=SECONDS]`` (a net takes ``mac=MAC`` too): a device of
    ``kind`` served by the backend listening at PATH."""
    option = _VHOST_USER_OPTIONS[kind]
    keys = VHOST_USER_KEYS[kind]
    usage = (f"{option} {text!r}: expected vhost-user=PATH"
             + "".join(f"[,{key}={key.upper()}]" for key in keys))
    options: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not value or key.strip() in options:
            raise ValueError(usage)
        options[key.strip()] = value.strip()
    unknown = set(options) - {"vhost-user", *keys}
    if unknown:
        raise ValueError(f"{usage} (unknown: {', '.join(sorted(unknown))})")
    reconnect: float | None = None
    if "reconnect" in options:
        try:
            reconnect = float(options["reconnect"])
        except ValueError:
            raise ValueError(f"{option} {text!r}: reconnect is a number of seconds") from None
    vu = VhostUser(kind, options["vhost-user"], reconnect, options.get("mac"))
    return _checked(check_vhost_user, vu, f"{option} {text!r}")


def parse_disk(text: str) -> Disk:
    """``FILE`` or ``FILE,readonly`` (``ro`` too)."""
    path, _, options = text.partition(",")
    flags = {o.strip() for o in options.split(",") if o.strip()}
    if flags - set(DISK_FLAGS) or not path:
        raise ValueError(f"--disk {text!r}: expected FILE or FILE,readonly")
    disk = Disk(path, bool(flags))
    return _checked(check_disk, disk, f"--disk {text!r}")


def parse_net(text: str) -> Net:
    """``tap=NAME[,mac=52:54:00:12:34:56][,rom=FILE|ipxe]``; ``rom=ipxe`` is Debian's iPXE
    (:data:`~xinterface.spec.IPXE_VIRTIO_ROM`)."""
    usage = f"--net {text!r}: expected tap=NAME[,mac=MAC][,rom=FILE]"
    options: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not value or key.strip() in options:
            raise ValueError(usage)
        options[key.strip()] = value.strip()
    unknown = set(options) - set(NET_KEYS)
    if unknown or "tap" not in options:
        raise ValueError(usage + (f" (unknown: {', '.join(sorted(unknown))})" if unknown
                                  else ""))
    rom = options.get("rom")
    net = Net(options["tap"], options.get("mac"), IPXE_VIRTIO_ROM if rom == "ipxe" else rom)
    return _checked(check_net, net, f"--net {text!r}")
