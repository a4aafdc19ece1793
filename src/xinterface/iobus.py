"""The PIO and MMIO buses: exact-match events and range devices, dispatched without a lock.

A write goes first to the exact-match event registered for ``(addr, len)``, if any (events
always claim: the seed's ``ioevent_write`` returned ``-EOPNOTSUPP`` only when addr or len
differed, and those never reach it here); then to the range device whose range holds
``addr``, which may decline by returning ``False``; otherwise it is unhandled. Reads go to the
range device, else they are unhandled (the exit loop returns all-ones).

Concurrency: updates take ``_update``; vCPU threads take nothing. Events live in one dict,
changed in place under ``_update``: a single ``dict.get`` is atomic under the GIL, and
copying a 100,000-entry dict on every registration would make registration O(n).
Range devices are a sorted, immutable ``(starts, devices)`` pair replaced whole
(copy-on-write), since a reader must see both tuples of the same version. Removal clears the
entry's ``live`` flag, unpublishes it, then waits a grace period (:mod:`.grace`).
"""

from __future__ import annotations

import bisect
import errno
import threading
from collections.abc import Callable
from typing import Any, Protocol

from .errors import XInterfaceError
from .grace import Grace

# (offset into the device, payload) -> False to decline; anything else claims.
RangeWrite = Callable[[int, bytes], "bool | None"]
# (offset into the device, size) -> exactly ``size`` bytes, or None to decline.
RangeRead = Callable[[int, int], "bytes | None"]

MAX_EVENTS = 1 << 20  # per bus; ENOSPC beyond. The kernel's io bus allowed 1000 devices.


class Bus(Protocol):
    """What the exit loop needs of an I/O bus: claim a write, serve a read."""

    def write(self, addr: int, data: bytes) -> bool: ...
    def read(self, addr: int, size: int) -> bytes | None: ...


class EventEntry(Protocol):
    """What the bus needs of an exact-match event (an ``XIOEvent``)."""

    addr: int
    length: int
    live: bool
    signal: Callable[[Any, bytes], None] | None


class RangeDevice:
    """``size`` bytes of address space at ``base`` served by ``read``/``write``."""

    __slots__ = ("base", "end", "live", "name", "read", "size", "write")

    def __init__(self, base: int, size: int, read: RangeRead | None, write: RangeWrite | None,
                 name: str = "") -> None:
        self.base = base
        self.size = size
        self.end = base + size
        self.read = read
        self.write = write
        self.name = name
        self.live = True

    def __repr__(self) -> str:
        return f"RangeDevice({self.name or '?'} {self.base:#x}+{self.size:#x})"


def event_key(addr: int, length: int) -> int:
    # One int instead of a tuple: no allocation per lookup for the common small addresses.
    return (addr << 4) | length


class IoBus:
    """One address space (``"pio"``: 16-bit ports, ``"mmio"``: 64-bit addresses)."""

    def __init__(self, space: str, limit: int, grace: Grace) -> None:
        self.space = space
        self.limit = limit
        self._grace = grace
        self._update = threading.Lock()
        self._events: dict[int, EventEntry] = {}
        # Read without a lock by write_ranges, and by the compiled exit loop (_fastloop.c,
        # write_range), which relies on this shape: replaced whole, never changed in place.
        self._ranges: tuple[tuple[int, ...], tuple[RangeDevice, ...]] = ((), ())

    # --- the hot path ------------------------------------------------------------------------
    @property
    def events(self) -> dict[int, EventEntry]:
        """The live event table, keyed by :func:`event_key`, for the exit loop's fast path."""
        return self._events

    def write(self, addr: int, data: bytes) -> bool:
        event = self._events.get((addr << 4) | len(data))
        if event is not None and event.live:
            signal = event.signal
            if signal is not None:
                signal(event, data)
            return True  # claimed; with no signal set, dropped as in the seed
        return self.write_ranges(addr, data)

    def write_ranges(self, addr: int, data: bytes) -> bool:
        """The second half of :meth:`write`: the range device holding ``addr``, if any."""
        starts, devices = self._ranges
        i = bisect.bisect_right(starts, addr) - 1
        if i >= 0:
            device = devices[i]
            if addr < device.end and device.live and device.write is not None:
                return device.write(addr - device.base, data) is not False
        return False

    def read(self, addr: int, size: int) -> bytes | None:
        starts, devices = self._ranges
        i = bisect.bisect_right(starts, addr) - 1
        if i >= 0:
            device = devices[i]
            if addr < device.end and device.live and device.read is not None:
                value = device.read(addr - device.base, size)
                if value is not None and len(value) != size:
                    raise ValueError(f"{device!r} returned {len(value)} bytes for a "
                                     f"{size}-byte read at {addr:#x}")
                return value
        return None

    # --- updates ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._events) + len(self._ranges[1])

    def add_event(self, entry: EventEntry) -> None:
        """Publish a fully built event; ``EEXIST`` if ``(addr, length)`` is taken."""
        key = event_key(entry.addr, entry.length)
        with self._update:
            if key in self._events:
                raise XInterfaceError(
                    errno.EEXIST, f"an event for {self.space} address {entry.addr:#x} length "
                    f"{entry.length} already exists", argument="addr", value=entry.addr)
            if len(self._events) >= MAX_EVENTS:
                raise XInterfaceError(errno.ENOSPC, f"the {self.space} bus holds {MAX_EVENTS} "
                                      "events already", argument="addr", value=entry.addr)
            self._events[key] = entry

    def remove_event(self, entry: EventEntry) -> None:
        """Unpublish ``entry``; on return no vCPU is inside or can enter its handler."""
        key = event_key(entry.addr, entry.length)
        with self._update:
            entry.live = False
            if self._events.get(key) is entry:
                del self._events[key]
        self._grace.synchronize()

    def add_range(self, device: RangeDevice) -> None:
        """Publish a range device; ``EEXIST`` if it overlaps another."""
        with self._update:
            starts, devices = self._ranges
            i = bisect.bisect_right(starts, device.base)
            before = devices[i - 1] if i else None
            after = devices[i] if i < len(devices) else None
            for other in (before, after):
                if other is not None and other.base < device.end and device.base < other.end:
                    raise XInterfaceError(
                        errno.EEXIST, f"{self.space} range {device.base:#x}+{device.size:#x} "
                        f"overlaps {other!r}", argument="base", value=device.base)
            self._ranges = ((*starts[:i], device.base, *starts[i:]),
                            (*devices[:i], device, *devices[i:]))

    def remove_range(self, device: RangeDevice) -> None:
        with self._update:
            device.live = False
            starts, devices = self._ranges
            if device in devices:
                i = devices.index(device)
                self._ranges = (starts[:i] + starts[i + 1 :], devices[:i] + devices[i + 1 :])
        self._grace.synchronize()
