"""The xinterface of the seed: bind to a VM, reference counts, copies, vmap and sgmap.

``kvm_xinterface_bind`` / ``get`` / ``put`` / ``ops->copy_to`` / ``ops->copy_from`` /
``ops->vmap`` and the scatter-gather map of the series, as Python objects over a
:class:`~xinterface.machine.Machine`. Differences from the seed are the fixes DESIGN.md lists:
copies translate every byte (not only the first gpa), and closing the machine tears every
client down instead of letting one keep the VM alive.
"""

from __future__ import annotations

import enum
import errno
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .errors import XInterfaceError
from .iobus import IoBus, RangeDevice, RangeRead, RangeWrite
from .machine import Machine, machine_for_fd
from .memory import GuestMemory


class XIOEventFlags(enum.IntFlag):
    """``KVM_XIOEVENT_FLAG_*``: PIO picks the port bus; without it, the MMIO bus."""

    PIO = 1 << 0


# The seed's names, for readers of the patch.
KVM_XIOEVENT_FLAG_PIO = int(XIOEventFlags.PIO)
KVM_XIOEVENT_VALID_FLAG_MASK = (1 << len(XIOEventFlags)) - 1

EVENT_LENGTHS = (1, 2, 4, 8)

Signal = Callable[["XIOEvent", bytes], None]


def _badf(what: str) -> XInterfaceError:
    return XInterfaceError(errno.EBADF, f"{what} is released", argument="self", value=what)


def _check_length(length: object, name: str = "length") -> int:
    if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
        raise XInterfaceError(errno.EINVAL, f"{name} {length!r} must be a positive int",
                              argument=name, value=length)
    return length


def _check_gpa(gpa: object) -> int:
    if isinstance(gpa, bool) or not isinstance(gpa, int) or gpa < 0:
        raise XInterfaceError(errno.EINVAL, f"gpa {gpa!r} must be a non-negative int",
                              argument="gpa", value=gpa)
    return gpa


class _Counted:
    """A reference count whose last ``put`` runs ``_last_put`` exactly once."""

    _what = "object"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs = 1
        self._dead = False

    @property
    def released(self) -> bool:
        return self._dead

    def _check(self) -> None:
        if self._dead:
            raise _badf(self._what)

    def get(self) -> _Counted:
        with self._lock:
            self._check()
            self._refs += 1
        return self

    def put(self) -> None:
        """Drop one reference; the last one releases the object."""
        with self._lock:
            self._check()
            if self._refs > 1:
                self._refs -= 1
                return
            # Released only if the teardown succeeds: a map still exported stays alive.
            self._last_put()
            self._refs = 0
            self._dead = True

    def _last_put(self) -> None:
        raise NotImplementedError


class XInterface(_Counted):
    """A client's handle on one machine (``struct kvm_xinterface``). Made by :func:`bind`."""

    _what = "the xinterface"

    def __init__(self, machine: Machine) -> None:
        super().__init__()
        self.machine = machine
        self._maps: set[_GuestMap] = set()
        self._io: set[_BusEntry] = set()
        self._release_lock = threading.Lock()
        machine._attach(self)

    def get(self) -> XInterface:
        super().get()
        return self

    def _memory(self) -> GuestMemory:
        self._check()
        memory = self.machine.memory
        if memory is None:
            raise _badf("the machine")
        return memory

    def copy_to(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` to guest memory at ``gpa``: all of it, or nothing and ``EFAULT``."""
        self._memory().write(_check_gpa(gpa), data)

    def copy_from(self, gpa: int, length: int) -> bytes:
        """``length`` bytes of guest memory at ``gpa``: all of them, or ``EFAULT``."""
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise XInterfaceError(errno.EINVAL, f"length {length!r} must be a non-negative int",
                                  argument="length", value=length)
        return self._memory().read(_check_gpa(gpa), length)

    def vmap(self, gpa: int, length: int) -> XVMap:
        """A zero-copy, writable view of ``[gpa, gpa+length)``, which must lie in one region."""
        view = self._memory().view(_check_gpa(gpa), _check_length(length))
        return XVMap(self, gpa, length, view)

    def sgmap(self, elements: Sequence[tuple[int, int]]) -> XSGMap:
        """One view per ``(gpa, length)`` element; any element outside RAM maps nothing."""
        memory = self._memory()
        items = list(elements)
        if not items:
            raise XInterfaceError(errno.EINVAL, "elements must not be empty",
                                  argument="elements", value=elements)
        views: list[memoryview] = []
        try:
            for i, element in enumerate(items):
                try:
                    gpa, length = element
                except (TypeError, ValueError):
                    raise XInterfaceError(errno.EINVAL, f"element {i} {element!r} is not a "
                                          "(gpa, length) pair", argument="elements",
                                          value=element) from None
                try:
                    views.append(memory.view(_check_gpa(gpa), _check_length(length)))
                except XInterfaceError as exc:
                    raise XInterfaceError(exc.errno or errno.EINVAL,
                                          f"element {i}: {exc.strerror}", argument="elements",
                                          value=element) from None
        except BaseException:
            for view in views:
                view.release()
            raise
        return XSGMap(self, [(g, n) for g, n in items], views)

    def _bus(self, addr: object, length: object, flags: object) -> tuple[IoBus, int, int]:
        """Validate as the seed's xinterface_ioevent does; the bus the flags choose."""
        self._check()
        if isinstance(flags, bool) or not isinstance(flags, int) or (
                flags & ~KVM_XIOEVENT_VALID_FLAG_MASK) or flags < 0:
            mask = KVM_XIOEVENT_VALID_FLAG_MASK
            raise XInterfaceError(errno.EINVAL, f"flags {flags!r} has bits outside "
                                  f"KVM_XIOEVENT_VALID_FLAG_MASK ({mask:#x})",
                                  argument="flags", value=flags)
        bus = self.machine.pio_bus if flags & XIOEventFlags.PIO else self.machine.mmio_bus
        if isinstance(addr, bool) or not isinstance(addr, int) or addr < 0:
            raise XInterfaceError(errno.EINVAL, f"addr {addr!r} must be a non-negative int",
                                  argument="addr", value=addr)
        if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
            raise XInterfaceError(errno.EINVAL, f"length {length!r} must be a positive int",
                                  argument="length", value=length)
        if addr >= bus.limit:
            raise XInterfaceError(errno.EINVAL, f"addr {addr:#x} is past the end of the "
                                  f"{bus.space} bus ({bus.limit - 1:#x})",
                                  argument="addr", value=addr)
        if addr + length > bus.limit and bus.space == "mmio":
            raise XInterfaceError(errno.EINVAL, f"addr {addr:#x} + length {length} overflows "
                                  "the 64-bit address space", argument="addr", value=addr)
        return bus, addr, length

    def ioevent(self, addr: int, length: int, flags: int = 0, *,
                signal: Signal | None = None) -> XIOEvent:
        """``ops->ioevent``: call ``signal(event, payload)`` on each guest write of exactly
        ``length`` bytes to ``addr`` (a port with ``XIOEventFlags.PIO``, else MMIO).

        ``EINVAL`` for a length other than 1, 2, 4, 8, an address past the bus or overflowing
        it, unknown flag bits; ``EEXIST`` if the bus has an event at ``(addr, length)``.
        The event is published fully built: a write can never see it half initialised.
        """
        bus, addr, length = self._bus(addr, length, flags)
        if length not in EVENT_LENGTHS:
            raise XInterfaceError(errno.EINVAL, f"length {length} must be 1, 2, 4 or 8",
                                  argument="length", value=length)
        if signal is not None and not callable(signal):
            raise XInterfaceError(errno.EINVAL, f"signal {signal!r} is not callable",
                                  argument="signal", value=signal)
        event = XIOEvent(self, bus, addr, length, int(flags), signal)
        self.get()
        try:
            bus.add_event(event)
        except BaseException:
            self.put()
            raise
        with self._lock:
            self._io.add(event)
        return event

    def iorange(self, base: int, size: int, flags: int = 0, *, read: RangeRead | None = None,
                write: RangeWrite | None = None, name: str = "") -> XIORange:
        """A range device for device models: ``size`` bytes of port or MMIO space at ``base``.

        ``write(offset, payload)`` gets every write whose address falls in the range and no
        exact-match event took (return ``False`` to decline); ``read(offset, size)`` returns
        ``size`` bytes, or ``None`` to decline (the guest then reads all-ones).
        ``EEXIST`` if it overlaps another range device on the same bus.
        """
        bus, base, size = self._bus(base, size, flags)
        if base + size > bus.limit:
            raise XInterfaceError(errno.EINVAL, f"base {base:#x} + size {size:#x} is past the "
                                  f"end of the {bus.space} bus", argument="size", value=size)
        device = RangeDevice(base, size, read, write, name)
        entry = XIORange(self, bus, device)
        self.get()
        try:
            bus.add_range(device)
        except BaseException:
            self.put()
            raise
        with self._lock:
            self._io.add(entry)
        return entry

    def _drop_io(self, entry: _BusEntry) -> None:
        with self._lock:
            self._io.discard(entry)

    def _last_put(self) -> None:
        self.release()

    def release(self) -> None:
        """``ops->release``: runs once, on the last ``put`` (or when the machine closes)."""
        with self._release_lock:
            self.machine._detach(self)

    def _add_map(self, m: _GuestMap) -> None:
        self._maps.add(m)

    def _drop_map(self, m: _GuestMap) -> None:
        self._maps.discard(m)

    def _machine_closing(self) -> None:
        """Tear down for Machine.close(): release every map, then the interface itself.

        A map whose view is still exported (e.g. to a NumPy array) raises BufferError and
        stays, and so does the interface, so close() can be retried once it is dropped.
        """
        for entry in list(self._io):
            entry.deassign()
        failed: list[str] = []
        for m in list(self._maps):
            try:
                m._force_release()
            except BufferError:
                failed.append(repr(m))
        if failed:
            raise BufferError(f"cannot close the machine: {', '.join(failed)} still exported "
                              "to another buffer (e.g. a NumPy array); drop it first")
        with self._lock:
            if not self._dead:
                self._dead = True
                self._refs = 0
                self.release()

    def __enter__(self) -> XInterface:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._dead:
            self.put()


class _BusEntry:
    """Something this interface published on a bus; ``deassign`` takes it down once."""

    def __init__(self, intf: XInterface, bus: IoBus) -> None:
        self.intf = intf
        self._bus = bus
        self._deassigned = False
        self._deassign_lock = threading.Lock()

    def deassign(self) -> None:
        """Unregister; once this returns the handlers are never called again (a handler may
        call this on its own entry). Drops the interface reference. A second call does nothing.
        """
        with self._deassign_lock:
            if self._deassigned:
                return
            self._deassigned = True
        self._unpublish()
        self.intf._drop_io(self)
        if not self.intf.released:
            self.intf.put()

    def _unpublish(self) -> None:
        raise NotImplementedError


class XIOEvent(_BusEntry):
    """``struct kvm_xioevent``: ``signal(event, payload)`` on each matching guest write.

    ``signal`` may be set or changed at any time; with none set, matching writes are claimed
    and dropped. ``priv`` is the client's. The handler runs on the trapping vCPU's thread
    with the vCPU paused, and may call any xinterface method, ``deassign()`` included.
    """

    def __init__(self, intf: XInterface, bus: IoBus, addr: int, length: int, flags: int,
                 signal: Signal | None) -> None:
        super().__init__(intf, bus)
        self.addr = addr
        self.length = length
        self.flags = XIOEventFlags(flags)
        self.signal = signal
        self.priv: Any = None
        self.live = True

    def _unpublish(self) -> None:
        self._bus.remove_event(self)

    def __repr__(self) -> str:
        return f"XIOEvent({self._bus.space} {self.addr:#x} len {self.length})"


class XIORange(_BusEntry):
    """A range device published with :meth:`XInterface.iorange`."""

    def __init__(self, intf: XInterface, bus: IoBus, device: RangeDevice) -> None:
        super().__init__(intf, bus)
        self.device = device
        self.base = device.base
        self.size = device.size

    def _unpublish(self) -> None:
        self._bus.remove_range(self.device)

    def __repr__(self) -> str:
        return f"XIORange({self._bus.space} {self.base:#x}+{self.size:#x} {self.device.name})"


class _GuestMap(_Counted):
    """Views of guest RAM holding a reference on their interface (``struct kvm_xvmap``)."""

    def __init__(self, intf: XInterface, views: list[memoryview]) -> None:
        super().__init__()
        intf.get()
        self.intf = intf
        self._views = views
        intf._add_map(self)

    def _last_put(self) -> None:
        self._release_views()
        self.intf._drop_map(self)
        self.intf.put()

    def _release_views(self) -> None:
        for view in self._views:
            try:
                view.release()
            except BufferError:
                raise BufferError(f"{self!r} is still exported to another buffer (e.g. a NumPy "
                                  "array); drop that first") from None

    def _force_release(self) -> None:
        with self._lock:
            if self._dead:
                return
            self._release_views()
            self._dead = True
            self._refs = 0
            self.intf._drop_map(self)

    def __enter__(self) -> _GuestMap:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._dead:
            self.put()


class XVMap(_GuestMap):
    """``intf.vmap(gpa, length)``: ``.addr`` is a writable zero-copy ``memoryview``.

    After the last ``put`` the view is released: using ``.addr`` raises ``ValueError``.
    """

    _what = "the vmap"

    def __init__(self, intf: XInterface, gpa: int, length: int, view: memoryview) -> None:
        self.gpa = gpa
        self.len = length
        super().__init__(intf, [view])

    @property
    def addr(self) -> memoryview:
        return self._views[0]

    def get(self) -> XVMap:
        super().get()
        return self

    def __enter__(self) -> XVMap:
        return self

    def __repr__(self) -> str:
        return f"XVMap(gpa={self.gpa:#x}, len={self.len:#x})"


class XSGMap(_GuestMap):
    """``intf.sgmap([(gpa, length), ...])``: ``.views[i]`` maps element ``i``."""

    _what = "the sgmap"

    def __init__(self, intf: XInterface, elements: list[tuple[int, int]],
                 views: list[memoryview]) -> None:
        self.elements = elements
        super().__init__(intf, views)

    @property
    def views(self) -> list[memoryview]:
        return list(self._views)

    def __len__(self) -> int:
        return len(self._views)

    def __iter__(self) -> Iterator[memoryview]:
        return iter(self._views)

    def get(self) -> XSGMap:
        super().get()
        return self

    def __enter__(self) -> XSGMap:
        return self

    def __repr__(self) -> str:
        parts = ", ".join(f"({g:#x}, {n:#x})" for g, n in self.elements[:4])
        more = ", ..." if len(self.elements) > 4 else ""
        return f"XSGMap([{parts}{more}])"


def bind(target: Machine | int) -> XInterface:
    """``kvm_xinterface_bind``: an interface on a Machine, or on the VM fd of one of ours.

    ``EBADF`` for a closed fd or machine, ``EINVAL`` for an fd that is not one of our VMs.
    """
    if isinstance(target, Machine):
        machine = target
    elif isinstance(target, int) and not isinstance(target, bool):
        try:
            os.fstat(target)
        except OSError:
            raise XInterfaceError(errno.EBADF, f"fd {target} is not an open file descriptor",
                                  argument="target", value=target) from None
        found = machine_for_fd(target)
        if found is None:
            raise XInterfaceError(errno.EINVAL, f"fd {target} is not the VM fd of a Machine "
                                  "of this process", argument="target", value=target)
        machine = found
    else:
        raise XInterfaceError(errno.EINVAL, f"target {target!r} is neither a Machine nor a "
                              "VM fd", argument="target", value=target)
    if machine.closed:
        raise XInterfaceError(errno.EBADF, "the machine is closed", argument="target",
                              value=target)
    return XInterface(machine)
