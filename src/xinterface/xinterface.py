"""The xinterface of the seed: bind to a VM, reference counts, copies, vmap and sgmap.

``kvm_xinterface_bind`` / ``get`` / ``put`` / ``ops->copy_to`` / ``ops->copy_from`` /
``ops->vmap`` and the scatter-gather map of the series, as Python objects over a
:class:`~xinterface.machine.Machine`. Differences from the seed are the fixes DESIGN.md lists:
copies translate every byte (not only the first gpa), and closing the machine tears every
client down instead of letting one keep the VM alive.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, TypeVar

from .delivery import Delivery
from .delivery.eventfd import new_eventfd, read_count
from .errors import GuestIOError, XInterfaceError
from .iobus import IoBus, RangeDevice, RangeRead, RangeWrite
from .kvm import uapi
from .machine import Machine, machine_for_fd
from .memory import GuestMemory


class XIOEventFlags(enum.IntFlag):
    """``KVM_XIOEVENT_FLAG_*``: PIO picks the port bus; without it, the MMIO bus."""

    PIO = 1 << 0


# The seed's names, for readers of the patch.
KVM_XIOEVENT_FLAG_PIO = int(XIOEventFlags.PIO)
KVM_XIOEVENT_VALID_FLAG_MASK = (1 << len(XIOEventFlags)) - 1

EVENT_LENGTHS = (1, 2, 4, 8)

_CAP_NAMES = {
    uapi.KVM_CAP_COALESCED_PIO: "KVM_CAP_COALESCED_PIO",
    uapi.KVM_CAP_COALESCED_MMIO: "KVM_CAP_COALESCED_MMIO",
    uapi.KVM_CAP_IRQFD: "KVM_CAP_IRQFD",
    uapi.KVM_CAP_IRQFD_RESAMPLE: "KVM_CAP_IRQFD_RESAMPLE",
}

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

    def ioevent(self, addr: int, length: int, flags: int = 0, *, signal: Signal | None = None,
                delivery: Delivery = Delivery.SYNC, datamatch: int | None = None) -> XIOEvent:
        """``ops->ioevent``: call ``signal(event, payload)`` on each guest write of exactly
        ``length`` bytes to ``addr`` (a port with ``XIOEventFlags.PIO``, else MMIO).

        ``EINVAL`` for a length other than 1, 2, 4, 8, an address past the bus or overflowing
        it, unknown flag bits; ``EEXIST`` if the bus has an event at ``(addr, length)``.
        The event is published fully built: a write can never see it half initialised.
        ``delivery`` picks the path (README: Delivery modes); ``EOPNOTSUPP`` if the kernel
        lacks it. ``datamatch`` (EVENTFD only) fires on that value alone.
        """
        bus, addr, length = self._bus(addr, length, flags)
        if length not in EVENT_LENGTHS:
            raise XInterfaceError(errno.EINVAL, f"length {length} must be 1, 2, 4 or 8",
                                  argument="length", value=length)
        if signal is not None and not callable(signal):
            raise XInterfaceError(errno.EINVAL, f"signal {signal!r} is not callable",
                                  argument="signal", value=signal)
        if not isinstance(delivery, Delivery):
            raise XInterfaceError(errno.EINVAL, f"delivery {delivery!r} is not a Delivery",
                                  argument="delivery", value=delivery)
        if datamatch is not None:
            if delivery is not Delivery.EVENTFD:
                raise XInterfaceError(errno.EINVAL, "datamatch is only for Delivery.EVENTFD",
                                      argument="datamatch", value=datamatch)
            if (isinstance(datamatch, bool) or not isinstance(datamatch, int)
                    or not 0 <= datamatch < 1 << (8 * length)):
                raise XInterfaceError(errno.EINVAL, f"datamatch {datamatch!r} does not fit in "
                                      f"{length} bytes", argument="datamatch", value=datamatch)
        if delivery is Delivery.EVENTFD:
            return self._eventfd_event(bus, addr, length, int(flags), signal, datamatch)
        if delivery is Delivery.POSTED:
            cap = uapi.KVM_CAP_COALESCED_PIO if bus.space == "pio" else uapi.KVM_CAP_COALESCED_MMIO
            if not self.machine.has_cap(cap):
                raise XInterfaceError(errno.EOPNOTSUPP, f"the kernel lacks {_CAP_NAMES[cap]}: no "
                                      f"POSTED delivery on the {bus.space} bus",
                                      argument="delivery", value=delivery)
        return self._register(XIOEvent(self, bus, addr, length, int(flags), signal, delivery))

    def _register(self, entry: _E) -> _E:
        """Publish ``entry`` holding a reference for it: all of it, or nothing and no reference."""
        self.get()
        try:
            entry._publish()
        except BaseException:
            self.put()
            raise
        with self._lock:
            self._io.add(entry)
        return entry

    def _eventfd_event(self, bus: IoBus, addr: int, length: int, flags: int,
                       signal: Signal | None, datamatch: int | None) -> XIOEvent:
        if not self.machine.has_cap(uapi.KVM_CAP_IOEVENTFD):
            raise XInterfaceError(errno.EOPNOTSUPP, "the kernel lacks KVM_CAP_IOEVENTFD",
                                  argument="delivery", value=Delivery.EVENTFD)
        event = self._register(XIOEventFd(self, bus, addr, length, flags, datamatch))
        event.signal = signal  # starts the event-loop thread's watch if set
        return event

    def irqfd(self, gsi: int, *, resample: bool = False) -> XIrqfd:
        """An eventfd bound to interrupt line ``gsi`` (``KVM_IRQFD``): ``.trigger()`` raises
        it. ``resample=True`` for a level-triggered line: the line stays asserted until the
        guest's EOI, which signals ``.resamplefd``. Needs ``Machine(irqchip=True)``.
        """
        self._check()
        if not self.machine.irqchip:
            raise XInterfaceError(errno.EOPNOTSUPP, "irqfd needs an in-kernel irqchip: "
                                  "Machine(irqchip=True)", argument="gsi", value=gsi)
        cap = uapi.KVM_CAP_IRQFD_RESAMPLE if resample else uapi.KVM_CAP_IRQFD
        if not self.machine.has_cap(cap):
            raise XInterfaceError(errno.EOPNOTSUPP, f"the kernel lacks {_CAP_NAMES[cap]}",
                                  argument="resample", value=resample)
        if isinstance(gsi, bool) or not isinstance(gsi, int) or not 0 <= gsi < 1 << 32:
            raise XInterfaceError(errno.EINVAL, f"gsi {gsi!r} is not an interrupt line",
                                  argument="gsi", value=gsi)
        return self._register(XIrqfd(self, gsi, resample))

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
        return self._register(XIORange(self, bus, RangeDevice(base, size, read, write, name)))

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

    def _publish(self) -> None:
        """Make the entry live (bus, kernel); on failure undo everything done so far."""
        raise NotImplementedError

    def _unpublish(self) -> None:
        raise NotImplementedError


_E = TypeVar("_E", bound=_BusEntry)


def _kvm_failure(exc: OSError, what: str, argument: str, value: object) -> XInterfaceError:
    """A failed registration ioctl, as the client's error: the kernel's errno, our words."""
    return XInterfaceError(exc.errno or errno.EIO, f"{what}: {exc.strerror}",
                           argument=argument, value=value)


class XIOEvent(_BusEntry):
    """``struct kvm_xioevent``: ``signal(event, payload)`` on each matching guest write.

    ``signal`` may be set or changed at any time; with none set, matching writes are claimed
    and dropped. ``priv`` is the client's. The handler runs on the trapping vCPU's thread
    with the vCPU paused (SYNC), on whichever thread drains the ring (POSTED), or on the
    event-loop thread (EVENTFD), and may call any xinterface method, ``deassign()`` included.
    """

    def __init__(self, intf: XInterface, bus: IoBus, addr: int, length: int, flags: int,
                 signal: Signal | None, delivery: Delivery = Delivery.SYNC) -> None:
        super().__init__(intf, bus)
        self.addr = addr
        self.length = length
        self.flags = XIOEventFlags(flags)
        self.delivery = delivery
        self.priv: Any = None
        self.live = True
        self.signal = signal

    def _publish(self) -> None:
        self._bus.add_event(self)
        if self.delivery is not Delivery.POSTED:
            return
        machine = self.intf.machine
        try:
            machine.vm.register_coalesced_mmio(self.addr, self.length, self._bus.space == "pio")
        except OSError as exc:
            self._bus.remove_event(self)
            raise _kvm_failure(exc, f"KVM_REGISTER_COALESCED_MMIO for {self!r}", "addr",
                               self.addr) from None
        ring = machine.ring
        assert ring is not None
        with ring.lock:
            ring.zones += 1

    def _unpublish(self) -> None:
        if self.delivery is Delivery.POSTED:
            machine = self.intf.machine
            ring = machine.ring
            if ring is not None and not machine.closed:
                machine.vm.unregister_coalesced_mmio(self.addr, self.length,
                                                     self._bus.space == "pio")
                with ring.lock:
                    ring.zones -= 1
                # Writes logged while the zone existed still reach the handler, in order,
                # before deassign returns; none can be logged after this point.
                machine.flush()
        self._bus.remove_event(self)

    def __repr__(self) -> str:
        return f"XIOEvent({self._bus.space} {self.addr:#x} len {self.length})"


class XIOEventFd(XIOEvent):
    """An EVENTFD event: a KVM ioeventfd. ``fileno()`` for selectors, ``await wait()`` and
    ``async for`` for asyncio (when no ``signal`` is set: one reader per eventfd).
    """

    def __init__(self, intf: XInterface, bus: IoBus, addr: int, length: int, flags: int,
                 datamatch: int | None) -> None:
        self.datamatch = datamatch
        self._fd = new_eventfd()
        self._signal: Signal | None = None
        self._watched = False
        self._payload = b"" if datamatch is None else datamatch.to_bytes(length, "little")
        self.count = 0
        super().__init__(intf, bus, addr, length, flags, None, Delivery.EVENTFD)

    @property
    def signal(self) -> Signal | None:
        return self._signal

    @signal.setter
    def signal(self, value: Signal | None) -> None:
        self._signal = value
        if self._fd < 0 or self._deassigned:
            return
        loop = self.intf.machine.event_loop()
        if value is not None and not self._watched:
            loop.add(self._fd, self._ready)
            self._watched = True
        elif value is None and self._watched:
            loop.remove(self._fd)
            self._watched = False

    def fileno(self) -> int:
        if self._fd < 0:
            raise _badf("the event")
        return self._fd

    def _ready(self) -> int:
        n = read_count(self._fd)
        signal = self._signal
        if n and signal is not None and self.live:
            self.count += n
            try:
                signal(self, self._payload)
            except Exception as exc:
                raise GuestIOError(f"the handler of {self!r} raised {type(exc).__name__}: "
                                   f"{exc}", vcpu=-1, space=self._bus.space, addr=self.addr,
                                   length=self.length) from exc
        return n

    async def wait(self) -> int:
        """Wait (asyncio) until the guest has written; the number of writes since last time."""
        loop = asyncio.get_running_loop()
        fd = self.fileno()
        while True:
            n = read_count(fd)
            if n:
                self.count += n
                return n
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, _resolve, ready)
            try:
                await ready
            finally:
                loop.remove_reader(fd)

    def __aiter__(self) -> AsyncIterator[int]:
        return self._counts()

    async def _counts(self) -> AsyncIterator[int]:
        while not self._deassigned:
            yield await self.wait()

    def _ioeventfd(self, deassign: bool) -> None:
        arg = uapi.kvm_ioeventfd(addr=self.addr, len=self.length, fd=self._fd)
        arg.flags = (uapi.KVM_IOEVENTFD_FLAG_PIO if self._bus.space == "pio" else 0) | (
            uapi.KVM_IOEVENTFD_FLAG_DEASSIGN if deassign else 0)
        if self.datamatch is not None:
            arg.flags |= uapi.KVM_IOEVENTFD_FLAG_DATAMATCH
            arg.datamatch = self.datamatch
        self.intf.machine.vm.ioeventfd(arg)

    def _publish(self) -> None:
        try:
            self._ioeventfd(deassign=False)
        except OSError as exc:
            self._close()
            raise _kvm_failure(exc, f"KVM_IOEVENTFD for {self!r}", "addr", self.addr) from None

    def _unpublish(self) -> None:
        self.live = False
        if self._watched:
            self.intf.machine.event_loop().remove(self._fd)
            self._watched = False
        if not self.intf.machine.closed:
            self._ioeventfd(deassign=True)
        self._close()

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __repr__(self) -> str:
        match = "" if self.datamatch is None else f" datamatch {self.datamatch:#x}"
        return f"XIOEvent({self._bus.space} {self.addr:#x} len {self.length} eventfd{match})"


class XIrqfd(_BusEntry):
    """``intf.irqfd(gsi)``: ``trigger()`` raises the guest interrupt ``gsi`` through KVM."""

    def __init__(self, intf: XInterface, gsi: int, resample: bool) -> None:
        super().__init__(intf, intf.machine.pio_bus)
        self.gsi = gsi
        self.fd = new_eventfd()
        self.resamplefd = new_eventfd() if resample else -1

    def trigger(self) -> None:
        if self.fd < 0:
            raise _badf("the irqfd")
        os.eventfd_write(self.fd, 1)

    def _irqfd(self, deassign: bool) -> None:
        arg = uapi.kvm_irqfd(fd=self.fd, gsi=self.gsi)
        if deassign:
            arg.flags = uapi.KVM_IRQFD_FLAG_DEASSIGN
        elif self.resamplefd >= 0:
            arg.flags = uapi.KVM_IRQFD_FLAG_RESAMPLE
            arg.resamplefd = self.resamplefd
        self.intf.machine.vm.irqfd(arg)

    def _publish(self) -> None:
        try:
            self._irqfd(deassign=False)
        except OSError as exc:
            self._close()
            raise _kvm_failure(exc, f"KVM_IRQFD for gsi {self.gsi}", "gsi", self.gsi) from None

    def _unpublish(self) -> None:
        if not self.intf.machine.closed:
            self._irqfd(deassign=True)
        self._close()

    def _close(self) -> None:
        for name in ("fd", "resamplefd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    def __repr__(self) -> str:
        return f"XIrqfd(gsi {self.gsi})"


class XIORange(_BusEntry):
    """A range device published with :meth:`XInterface.iorange`."""

    def __init__(self, intf: XInterface, bus: IoBus, device: RangeDevice) -> None:
        super().__init__(intf, bus)
        self.device = device
        self.base = device.base
        self.size = device.size

    def _publish(self) -> None:
        self._bus.add_range(self.device)

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


def _resolve(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


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
