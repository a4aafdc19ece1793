"""xioevent: guest writes to a port or MMIO address, delivered with their payload; and the
other things an interface publishes on a bus or in the kernel (range devices, irqfds).

The seed's ``struct kvm_xioevent`` and ``KVM_XIOEVENT_FLAG_*``, plus the delivery modes
(:mod:`.delivery`) and ``XIORange``/``XIrqfd``, which device models need.
"""

from __future__ import annotations

import enum
import errno
import os
import threading
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .delivery import Delivery
from .delivery.eventfd import new_eventfd, read_count
from .errors import GuestIOError, XInterfaceError
from .iobus import IoBus, RangeDevice, RangeRead, RangeWrite
from .kvm import uapi
from .maps import Handle
from .refcount import badf

if TYPE_CHECKING:
    import asyncio  # imported where used: it costs tens of ms at start-up


class XIOEventFlags(enum.IntFlag):
    """``KVM_XIOEVENT_FLAG_*``: PIO picks the port bus; without it, the MMIO bus."""

    PIO = 1 << 0


# The seed's names, for readers of the patch.
KVM_XIOEVENT_FLAG_PIO = int(XIOEventFlags.PIO)
KVM_XIOEVENT_VALID_FLAG_MASK = (1 << len(XIOEventFlags)) - 1

EVENT_LENGTHS = (1, 2, 4, 8)

CAP_NAMES = {
    uapi.KVM_CAP_COALESCED_PIO: "KVM_CAP_COALESCED_PIO",
    uapi.KVM_CAP_COALESCED_MMIO: "KVM_CAP_COALESCED_MMIO",
    uapi.KVM_CAP_IRQFD: "KVM_CAP_IRQFD",
    uapi.KVM_CAP_IRQFD_RESAMPLE: "KVM_CAP_IRQFD_RESAMPLE",
}

Signal = Callable[["XIOEvent", bytes], None]


class Interface(Handle, Protocol):
    """An ``XInterface`` as the entries it publishes see it: the memory services and the I/O
    ones, so that a handler may call ``ev.intf.ioevent(...)``. Stated here so that this module
    need not import the interface (docs/design.md, Layout)."""

    def ioevent(self, addr: int, length: int, flags: int = 0, *, signal: Signal | None = None,
                delivery: Delivery = Delivery.SYNC,
                datamatch: int | None = None) -> XIOEvent: ...
    def irqfd(self, gsi: int, *, resample: bool = False,
              eventfd: int | None = None) -> XIrqfd: ...
    def set_irq(self, gsi: int, level: bool) -> None: ...
    def iorange(self, base: int, size: int, flags: int = 0, *, read: RangeRead | None = None,
                write: RangeWrite | None = None, name: str = "") -> XIORange: ...


class BusEntry:
    """Something this interface published on a bus; ``deassign`` takes it down once."""

    def __init__(self, intf: Interface, bus: IoBus) -> None:
        self.intf = intf
        self._bus = bus
        self._deassigned = False
        self._deassign_lock = threading.Lock()

    def deassign(self) -> None:
        """Unregister; once this returns the handlers are never called again (a handler may
        call this on its own entry). Drops the interface reference. A second call does nothing.

        Always completes: a handler that raises while this delivers what was logged before
        (POSTED) has its error raised, as ``GuestIOError``, after the entry is gone.
        """
        with self._deassign_lock:
            if self._deassigned:
                return
            self._deassigned = True
        try:
            self._unpublish()
        finally:
            self.intf._drop_io(self)
            if not self.intf.released:
                self.intf.put()

    def _publish(self) -> None:
        """Make the entry live (bus, kernel); on failure undo everything done so far."""
        raise NotImplementedError

    def _unpublish(self) -> None:
        raise NotImplementedError


E = TypeVar("E", bound=BusEntry)


def kvm_failure(exc: OSError, what: str, argument: str, value: object) -> XInterfaceError:
    """A failed registration ioctl, as the client's error: the kernel's errno, our words."""
    return XInterfaceError(exc.errno or errno.EIO, f"{what}: {exc.strerror}",
                           argument=argument, value=value)


class XIOEvent(BusEntry):
    """``struct kvm_xioevent``: ``signal(event, payload)`` on each matching guest write.

    ``signal`` may be set or changed at any time; with none set, matching writes are claimed
    and dropped. ``priv`` is the client's. The handler runs on the trapping vCPU's thread
    with the vCPU paused (SYNC), on whichever thread drains the ring (POSTED), or on the
    event-loop thread (EVENTFD), and may call any xinterface method, ``deassign()`` included.
    """

    def __init__(self, intf: Interface, bus: IoBus, addr: int, length: int, flags: int,
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
        vm = self.intf.vm
        try:
            vm.vmfd.register_coalesced_mmio(self.addr, self.length, self._bus.space == "pio")
        except OSError as exc:
            self._bus.remove_event(self)
            raise kvm_failure(exc, f"KVM_REGISTER_COALESCED_MMIO for {self!r}", "addr",
                               self.addr) from None
        ring = vm.ring
        assert ring is not None
        ring.add_zone(1)

    def _unpublish(self) -> None:
        try:
            if self.delivery is Delivery.POSTED:
                self._unpublish_zone()
        finally:
            self._bus.remove_event(self)

    def _unpublish_zone(self) -> None:
        vm = self.intf.vm
        ring = vm.ring
        if ring is None or vm.closed:
            return
        vm.vmfd.unregister_coalesced_mmio(self.addr, self.length, self._bus.space == "pio")
        # No write can be logged for the zone from here on. Those logged while it existed
        # still reach the handler, in order, before deassign returns; and the zone is counted
        # until then, so that the exit loop keeps draining first (posted ordering).
        try:
            vm.flush()
        finally:
            ring.add_zone(-1)

    def __repr__(self) -> str:
        return f"XIOEvent({self._bus.space} {self.addr:#x} len {self.length})"


def _dup(fd: int) -> int:
    try:
        return os.dup(fd)
    except OSError as exc:
        raise XInterfaceError(exc.errno or errno.EBADF, f"eventfd {fd}: {exc.strerror}",
                              argument="eventfd", value=fd) from None


class XIOEventFd(XIOEvent):
    """An EVENTFD event: a KVM ioeventfd. ``fileno()`` for selectors, ``await wait()`` and
    ``async for`` for asyncio (when no ``signal`` is set: one reader per eventfd).
    """

    def __init__(self, intf: Interface, bus: IoBus, addr: int, length: int, flags: int,
                 datamatch: int | None, eventfd: int | None = None) -> None:
        self.datamatch = datamatch
        # ``eventfd``: a caller's own (a vhost-user backend's kick fd), duplicated so the
        # event's end closes only its copy.
        self._fd = new_eventfd() if eventfd is None else _dup(eventfd)
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
        loop = self.intf.vm.event_loop()
        if value is not None and not self._watched:
            loop.add(self._fd, self._ready)
            self._watched = True
        elif value is None and self._watched:
            loop.remove(self._fd)
            self._watched = False

    def fileno(self) -> int:
        if self._fd < 0:
            raise badf("the event")
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
        import asyncio  # already loaded: this runs in an asyncio loop

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
        self.intf.vm.vmfd.ioeventfd(arg)

    def _publish(self) -> None:
        try:
            self._ioeventfd(deassign=False)
        except OSError as exc:
            self._close()
            raise kvm_failure(exc, f"KVM_IOEVENTFD for {self!r}", "addr", self.addr) from None

    def _unpublish(self) -> None:
        self.live = False
        if self._watched:
            self.intf.vm.event_loop().remove(self._fd)
            self._watched = False
        if not self.intf.vm.closed:
            self._ioeventfd(deassign=True)
        self._close()

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __repr__(self) -> str:
        match = "" if self.datamatch is None else f" datamatch {self.datamatch:#x}"
        return f"XIOEvent({self._bus.space} {self.addr:#x} len {self.length} eventfd{match})"


class XIrqfd(BusEntry):
    """``intf.irqfd(gsi)``: ``trigger()`` raises the guest interrupt ``gsi`` through KVM."""

    def __init__(self, intf: Interface, gsi: int, resample: bool,
                 eventfd: int | None = None) -> None:
        super().__init__(intf, intf.vm.pio_bus)
        self.gsi = gsi
        # ``eventfd``: a caller's own (a vhost-user backend's call fd), duplicated so the
        # irqfd's end closes only its copy.
        self.fd = new_eventfd() if eventfd is None else _dup(eventfd)
        self.resamplefd = new_eventfd() if resample else -1

    def trigger(self) -> None:
        if self.fd < 0:
            raise badf("the irqfd")
        os.eventfd_write(self.fd, 1)

    def _irqfd(self, deassign: bool) -> None:
        arg = uapi.kvm_irqfd(fd=self.fd, gsi=self.gsi)
        if deassign:
            arg.flags = uapi.KVM_IRQFD_FLAG_DEASSIGN
        elif self.resamplefd >= 0:
            arg.flags = uapi.KVM_IRQFD_FLAG_RESAMPLE
            arg.resamplefd = self.resamplefd
        self.intf.vm.vmfd.irqfd(arg)

    def _publish(self) -> None:
        try:
            self._irqfd(deassign=False)
        except OSError as exc:
            self._close()
            raise kvm_failure(exc, f"KVM_IRQFD for gsi {self.gsi}", "gsi", self.gsi) from None

    def _unpublish(self) -> None:
        if not self.intf.vm.closed:
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


class XIORange(BusEntry):
    """A range device published with :meth:`XInterface.iorange`."""

    def __init__(self, intf: Interface, bus: IoBus, device: RangeDevice) -> None:
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



def _resolve(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)

