"""The devices of a machine, as a snapshot sees them: every owner of a bus entry.

A device is found through what it registered: each range device's ``read``/``write`` and
each event's ``signal`` is a bound method of the device object. Each device is keyed by
its class, bus and first address, which the same description built again reproduces.
One that is not :class:`~xinterface.devices.persist.Persistent` makes the snapshot refuse,
naming it, before anything is written.
"""

from __future__ import annotations

import errno
from typing import Any

from ..devices.persist import Persistent
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


def devices(machine: Machine) -> dict[str, Any]:
    """``{key: device}`` of every device on the machine's buses; ``EOPNOTSUPP`` naming the
    first that cannot be saved."""
    out: dict[str, Any] = {}
    seen: set[int] = set()
    for bus in (machine.pio_bus, machine.mmio_bus):
        for addr, name, owner in sorted(_owners(bus), key=lambda t: t[0]):
            if id(owner) in seen:
                continue
            seen.add(id(owner))
            label = f"{type(owner).__name__} at {bus.space} {addr:#x}"
            if not isinstance(owner, Persistent):
                raise fail(errno.EOPNOTSUPP, f"cannot snapshot: device {name or label} "
                           f"({label}) has no save()/load()", label)
            out[f"{bus.space}:{addr:#x}:{type(owner).__name__}"] = owner
    return out
