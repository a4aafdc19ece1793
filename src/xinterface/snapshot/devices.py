"""The devices of a machine, as a snapshot sees them: every owner of a bus entry.

A device is found through what it registered: each range device's ``read``/``write`` and
each event's ``signal`` is a bound method of the device object. Each device is keyed by
its class, bus and first address, which the same description built again reproduces.
A :class:`~xinterface.devices.persist.Composite` (the PCI host bridge, a virtio transport)
saves its parts with it: the entries it covers (BARs the guest placed, doorbells) are not
devices of their own, so a machine built again, whose BARs are not placed yet, has the
same devices. One that is not :class:`~xinterface.devices.persist.Persistent`, or a part
that is not, makes the snapshot refuse, naming it, before anything is written.
"""

from __future__ import annotations

import errno
from typing import Any

from ..devices.persist import Composite, Persistent
from ..iobus import IoBus
from ..runner.machine import Machine
from .format import fail


def _owners(bus: IoBus) -> list[tuple[int, str, object]]:
    """(address, entry name, owner) of every live entry of ``bus``."""
    found: list[tuple[int, str, object]] = []
    routes = bus.routes
    for device in routes.devices:
        for call in (device.write, device.read):
            if call is not None:
                found.append((device.base, device.name, getattr(call, "__self__", call)))
    for event in list(routes.events.values()):
        if event.live and event.signal is not None:
            found.append((event.addr, "", getattr(event.signal, "__self__", event.signal)))
    return found


def _check_parts(owner: Composite, label: str, verb: str) -> None:
    for part in owner.parts():
        name = getattr(part, "name", type(part).__name__)
        if not isinstance(part, Persistent):
            raise fail(errno.EOPNOTSUPP, f"cannot {verb}: device {name} ({label}) has no "
                       "save()/load()", f"{name} in {label}")
        if isinstance(part, Composite):
            _check_parts(part, label, verb)


def devices(machine: Machine, verb: str = "snapshot") -> dict[str, Any]:
    """``{key: device}`` of every device on the machine's buses; ``EOPNOTSUPP`` naming the
    first that cannot be saved (``verb``: what the refusal says cannot be done)."""
    entries = [(bus.space, addr, name, owner)
               for bus in (machine.pio_bus, machine.mmio_bus)
               for addr, name, owner in sorted(_owners(bus), key=lambda t: t[0])]
    composites = {id(o): o for _, _, _, o in entries if isinstance(o, Composite)}
    out: dict[str, Any] = {}
    seen: set[int] = set()
    for space, addr, name, owner in entries:
        if id(owner) in seen or any(c is not owner and c.covers(space, addr)
                                    for c in composites.values()):
            continue
        seen.add(id(owner))
        label = f"{type(owner).__name__} at {space} {addr:#x}"
        if not isinstance(owner, Persistent):
            raise fail(errno.EOPNOTSUPP, f"cannot {verb}: device {name or label} "
                       f"({label}) has no save()/load()", label)
        if isinstance(owner, Composite):
            _check_parts(owner, label, verb)
        out[f"{space}:{addr:#x}:{type(owner).__name__}"] = owner
    return out
