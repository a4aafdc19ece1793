"""The PIO and MMIO buses: exact-match events and range devices, dispatched without a lock.

The bus owns the dispatch rule. A write goes first to the exact-match event registered for
``(addr, len)``, if any (events always claim: the seed's ``ioevent_write`` returned
``-EOPNOTSUPP`` only when addr or len differed, and those never reach it here); then to the
range device whose range holds ``addr``, which may decline by returning ``False``; otherwise
it is unhandled. Reads go to the range device, else they are unhandled (the exit loop returns
all-ones).

The rule is written once per language. :meth:`IoBus.write` and :meth:`IoBus.read` are the
Python one, used by the Python exit loop, the POSTED drain and any wrapper (tracing). The
compiled loop (``_fastloop.c``, ``bus_write``) applies the same rule to :attr:`IoBus.routes`,
a :class:`Routes` snapshot that is the bus's documented interface to C: a write then costs no
Python frame, which is most of what the compiled loop saves. A snapshot rather than a compiled
bus type, because the Python bus must keep working when the extension is not built, and a
plain tuple is the one shape both languages read without a copy. A bus whose ``routes`` is
None (a wrapper that must see every access) gets ``write``/``read`` called instead.
:func:`write_in`/:func:`read_in` (and their C twins) are where a dispatching thread's grace
slot is odd: entered before the handler is looked up, left after it returned.

Concurrency: updates take ``_update``; vCPU threads take nothing. Events live in one dict,
changed in place under ``_update``: a single ``dict.get`` is atomic under the GIL, and
copying a 100,000-entry dict on every registration would make registration O(n).
Range devices are the sorted, immutable ``starts``/``devices`` of :attr:`IoBus.routes`,
replaced whole (copy-on-write), since a reader must see both tuples of the same version.
Removal clears the entry's ``live`` flag, unpublishes it, then waits a grace period
(:mod:`.grace`).
"""

from __future__ import annotations

import bisect
import errno
import threading
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from .errors import XInterfaceError
from .grace import Grace, ReaderSlot
from .kvm.exits import Space

# (offset into the device, payload) -> False to decline; anything else claims.
RangeWrite = Callable[[int, bytes], "bool | None"]
# (offset into the device, size) -> exactly ``size`` bytes, or None to decline.
RangeRead = Callable[[int, int], "bytes | None"]

MAX_EVENTS = 1 << 20  # per bus; ENOSPC beyond. The kernel's io bus allowed 1000 devices.


class Bus(Protocol):
    """What the exit loop needs of an I/O bus: claim a write, serve a read.

    ``routes``: the table the compiled loop may serve from itself (see the module doc), or
    None to have every access go through ``write``/``read``.
    """

    @property
    def space(self) -> Space: ...
    @property
    def routes(self) -> Routes | None: ...
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
    # _fastloop.c (KEY_SHIFT) builds the same key.
    return (addr << 4) | length


class Routes(NamedTuple):
    """A bus's dispatch table, as the compiled exit loop reads it (``_fastloop.c``).

    ``events`` maps :func:`event_key` to a live-or-not :class:`EventEntry`; it is the bus's
    own dict, changed in place under the bus's lock (one lookup is atomic). ``starts`` and
    ``devices`` are the range devices sorted by base; a new :class:`Routes` replaces the old
    one whenever they change, so a reader holding one sees both tuples of one version.
    """

    events: dict[int, EventEntry]
    starts: tuple[int, ...]
    devices: tuple[RangeDevice, ...]


class IoBus:
    """One address space (:attr:`Space.PIO`: 16-bit ports, :attr:`Space.MMIO`: 64-bit)."""

    def __init__(self, space: Space | str, limit: int, grace: Grace) -> None:
        self.space = Space(space)
        self.limit = limit
        self._grace = grace
        self._update = threading.Lock()
        self._events: dict[int, EventEntry] = {}
        self.routes = Routes(self._events, (), ())
        """Read without a lock by :meth:`write`/:meth:`read` and by the compiled loop;
        replaced whole under the update lock, never changed in place (but ``events``)."""

    # --- the hot path ------------------------------------------------------------------------
    @property
    def events(self) -> dict[int, EventEntry]:
        """The live event table, keyed by :func:`event_key` (the POSTED drain serves it)."""
        return self._events

    def write(self, addr: int, data: bytes) -> bool:
        """Dispatch a guest write; whether anybody claimed it (the rule: the module doc)."""
        event = self._events.get((addr << 4) | len(data))
        if event is not None and event.live:
            signal = event.signal
            if signal is not None:
                signal(event, data)
            return True  # claimed; with no signal set, dropped as in the seed
        _, starts, devices = self.routes
        i = bisect.bisect_right(starts, addr) - 1
        if i >= 0:
            device = devices[i]
            if addr < device.end and device.live and device.write is not None:
                return device.write(addr - device.base, data) is not False
        return False

    def read(self, addr: int, size: int) -> bytes | None:
        """Dispatch a guest read: exactly ``size`` bytes, or None when nobody serves it."""
        _, starts, devices = self.routes
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
        return len(self._events) + len(self.routes.devices)

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
            _, starts, devices = self.routes
            i = bisect.bisect_right(starts, device.base)
            before = devices[i - 1] if i else None
            after = devices[i] if i < len(devices) else None
            for other in (before, after):
                if other is not None and other.base < device.end and device.base < other.end:
                    raise XInterfaceError(
                        errno.EEXIST, f"{self.space} range {device.base:#x}+{device.size:#x} "
                        f"overlaps {other!r}", argument="base", value=device.base)
            self.routes = Routes(self._events, (*starts[:i], device.base, *starts[i:]),
                                 (*devices[:i], device, *devices[i:]))

    def remove_range(self, device: RangeDevice) -> None:
        """Unpublish ``device``; on return no vCPU is inside or can enter its handlers."""
        with self._update:
            device.live = False
            _, starts, devices = self.routes
            if device in devices:
                i = devices.index(device)
                self.routes = Routes(self._events, starts[:i] + starts[i + 1 :],
                                     devices[:i] + devices[i + 1 :])
        self._grace.synchronize()


# The grace-slot bookkeeping of one dispatch (grace.py: an odd count means "inside"), for
# every Python caller; _fastloop.c's serve_write/serve_read are the compiled loop's. A
# handler's exception leaves the slot odd on purpose: that is how the exit loop tells a
# handler's error from its own (and ReaderSlot.leave_if_inside then leaves).
def write_in(slot: ReaderSlot, bus: Bus, addr: int, data: bytes) -> bool:
    """``bus.write(addr, data)`` with ``slot`` inside a dispatch for its whole length."""
    slot.count += 1
    claimed = bus.write(addr, data)
    slot.count += 1
    return claimed


def read_in(slot: ReaderSlot, bus: Bus, addr: int, size: int) -> bytes | None:
    """``bus.read(addr, size)`` with ``slot`` inside a dispatch for its whole length."""
    slot.count += 1
    value = bus.read(addr, size)
    slot.count += 1
    return value
