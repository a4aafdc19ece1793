"""The xinterface of the seed: bind to a VM, reference counts, copies, vmap and sgmap.

``kvm_xinterface_bind`` / ``get`` / ``put`` / ``ops->copy_to`` / ``ops->copy_from`` /
``ops->vmap`` and the scatter-gather map of the series, as Python objects over a
:class:`~xinterface.vm.Vm` (the seed's ``struct kvm``). Differences from the seed are the
fixes docs/design.md lists: copies translate every byte (not only the first gpa), and closing the
machine tears every client down instead of letting one keep the VM alive.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from .checks import check_int, is_int
from .delivery import Delivery
from .errors import XInterfaceError
from .iobus import IoBus, RangeDevice, RangeRead, RangeWrite
from .kvm import uapi
from .maps import GuestMap, XSGMap, XVMap
from .memory import GuestMemory, MemoryRegion
from .refcount import Counted, badf
from .runstate import RunControl
from .vm import Client, Vm, vm_for_fd
from .xioevent import (
    CAP_NAMES,
    EVENT_LENGTHS,
    KVM_XIOEVENT_FLAG_PIO,
    KVM_XIOEVENT_VALID_FLAG_MASK,
    BusEntry,
    E,
    Signal,
    XIOEvent,
    XIOEventFd,
    XIOEventFlags,
    XIORange,
    XIrqfd,
)

__all__ = [
    "KVM_XIOEVENT_FLAG_PIO",
    "KVM_XIOEVENT_VALID_FLAG_MASK",
    "XIOEvent",
    "XIOEventFd",
    "XIOEventFlags",
    "XIORange",
    "XInterface",
    "XIrqfd",
    "XSGMap",
    "XVMap",
    "bind",
]


def _check_length(length: object, name: str = "length") -> int:
    return check_int(length, name, minimum=1)


def _check_gpa(gpa: object) -> int:
    return check_int(gpa, "gpa")



class Host(Protocol):
    """What an :class:`XInterface` needs of what it is bound to for its memory services:
    the guest memory (None once closed, or before a vhost-user frontend sent its table),
    whether an in-kernel irqchip exists, how a device ends the run, and the list of bound
    clients that closing tears down. A :class:`~xinterface.vm.Vm` is one; a vhost-user
    session's :class:`~xinterface.vhost_user.interface.MemoryHost` is another. The I/O
    services (events, ranges, irqfds, interrupt lines) need a KVM VM itself (:attr:`XInterface.vm`).
    """

    @property
    def memory(self) -> GuestMemory | None: ...
    @property
    def irqchip(self) -> bool: ...
    @property
    def run_control(self) -> RunControl: ...
    def add_client(self, client: Client) -> None: ...
    def remove_client(self, client: Client) -> None: ...


class HasVm(Protocol):
    """Anything that carries a Vm, as a Machine does: ``bind()`` accepts it."""

    @property
    def vm(self) -> Vm: ...


class XInterface(Counted):
    """A client's handle on one VM (``struct kvm_xinterface``). Made by :func:`bind`.

    ``host`` is what it is bound to (:class:`Host`): a device reads ``host.irqchip`` there
    and ends a run with ``host.run_control.exit(status)`` or
    ``host.run_control.request_reset()``. ``vm`` is the same object when it is a KVM
    :class:`~xinterface.vm.Vm` (as :func:`bind` makes them), ``EOPNOTSUPP`` otherwise.
    """

    _what = "the xinterface"

    def __init__(self, host: Host) -> None:
        super().__init__()
        self.host = host
        self._maps: set[GuestMap] = set()
        self._io: set[BusEntry] = set()
        self._release_lock = threading.Lock()
        self._on_release: list[Callable[[], object]] = []
        host.add_client(self)

    @property
    def vm(self) -> Vm:
        """The KVM VM bound to; ``EOPNOTSUPP`` for another host (whose buses and interrupt
        lines, if any, are not this process's: a vhost-user frontend decodes its own)."""
        return self._kvm("vm", None)

    def _kvm(self, argument: str, value: object) -> Vm:
        if not isinstance(self.host, Vm):
            raise XInterfaceError(errno.EOPNOTSUPP, f"bound to {self.host!r}, not a KVM VM: "
                                  "no I/O events, ranges, irqfds or interrupt lines here",
                                  argument=argument, value=value)
        return self.host

    def get(self) -> XInterface:
        super().get()
        return self

    def _memory(self) -> GuestMemory:
        self._check()
        memory = self.host.memory
        if memory is None:
            raise badf("the machine")
        return memory

    def memory_regions(self) -> list[MemoryRegion]:
        """The guest memory's regions (in address order) as they are now, for code that
        translates guest addresses itself, as the compiled data path does; ``EBADF`` once
        released, as every access."""
        return self._memory().regions

    def copy_to(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` to guest memory at ``gpa``: all of it, or nothing and ``EFAULT``
        (a byte outside RAM, or in read-only memory such as the firmware ROM)."""
        if not isinstance(data, bytes):
            try:
                data = memoryview(data).cast("B")
            except TypeError:
                raise XInterfaceError(errno.EINVAL, "data must be a contiguous bytes-like "
                                      f"object, not {type(data).__name__}", argument="data",
                                      value=data) from None
        self._memory().write(_check_gpa(gpa), data)

    def copy_from(self, gpa: int, length: int) -> bytes:
        """``length`` bytes of guest memory at ``gpa``: all of them, or ``EFAULT``."""
        length = check_int(length, "length")
        return self._memory().read(_check_gpa(gpa), length)

    def vmap(self, gpa: int, length: int) -> XVMap:
        """A zero-copy, writable view of ``[gpa, gpa+length)``, which must lie in one region."""
        view = self._memory().view(_check_gpa(gpa), _check_length(length))
        return XVMap(self, gpa, length, view)

    def sgmap(self, elements: Sequence[tuple[int, int]]) -> XSGMap:
        """One view per ``(gpa, length)`` element; any element outside RAM maps nothing."""
        memory = self._memory()
        if isinstance(elements, str | bytes | bytearray) or not isinstance(elements, Iterable):
            raise XInterfaceError(errno.EINVAL, f"elements {elements!r} is not a list of "
                                  "(gpa, length) pairs", argument="elements", value=elements)
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

    def sgmap_walked(self, items: list[tuple[int, int]]) -> XSGMap | None:
        """:meth:`sgmap` for elements a device read from a descriptor table itself (a
        non-negative le64 address and a positive le32 length each, by construction), so
        the per-element argument checks are left out; None (nothing mapped) when any element
        is not within one region, for the caller's region-by-region path."""
        views = self._memory().views(items)
        if views is None:
            return None
        return XSGMap(self, items, views)

    def _bus(self, addr: object, length: object, flags: object) -> tuple[IoBus, int, int]:
        """Validate as the seed's xinterface_ioevent does; the bus the flags choose."""
        self._check()
        if not is_int(flags) or (
                flags & ~KVM_XIOEVENT_VALID_FLAG_MASK) or flags < 0:
            mask = KVM_XIOEVENT_VALID_FLAG_MASK
            raise XInterfaceError(errno.EINVAL, f"flags {flags!r} has bits outside "
                                  f"KVM_XIOEVENT_VALID_FLAG_MASK ({mask:#x})",
                                  argument="flags", value=flags)
        vm = self._kvm("addr", addr)
        bus = vm.pio_bus if flags & XIOEventFlags.PIO else vm.mmio_bus
        addr = check_int(addr, "addr")
        length = _check_length(length)
        if addr >= bus.limit:
            raise XInterfaceError(errno.EINVAL, f"addr {addr:#x} is past the end of the "
                                  f"{bus.space} bus ({bus.limit - 1:#x})",
                                  argument="addr", value=addr)
        if addr + length >= bus.limit and bus.space == "mmio":
            # The seed refuses addr + len < addr in 64-bit arithmetic: an end of exactly 2**64
            # wraps to 0. The kernel's ioeventfd refuses it the same way.
            raise XInterfaceError(errno.EINVAL, f"addr {addr:#x} + length {length} overflows "
                                  "the 64-bit address space", argument="addr", value=addr)
        return bus, addr, length

    def ioevent(self, addr: int, length: int, flags: int = 0, *, signal: Signal | None = None,
                delivery: Delivery = Delivery.SYNC, datamatch: int | None = None,
                eventfd: int | None = None) -> XIOEvent:
        """``ops->ioevent``: call ``signal(event, payload)`` on each guest write of exactly
        ``length`` bytes to ``addr`` (a port with ``XIOEventFlags.PIO``, else MMIO).

        ``EINVAL`` for a length other than 1, 2, 4, 8, an address past the bus or overflowing
        it, unknown flag bits; ``EEXIST`` if the bus has an event at ``(addr, length)``.
        The event is published fully built: a write can never see it half initialised.
        ``delivery`` picks the path (docs/delivery.md); ``EOPNOTSUPP`` if the kernel
        lacks it. ``datamatch`` (EVENTFD only) fires on that value alone. ``eventfd``
        (EVENTFD only): the eventfd KVM signals, the caller's own (another process may read
        it), instead of a new one.
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
            if not is_int(datamatch) or not 0 <= datamatch < 1 << (8 * length):
                raise XInterfaceError(errno.EINVAL, f"datamatch {datamatch!r} does not fit in "
                                      f"{length} bytes", argument="datamatch", value=datamatch)
        if eventfd is not None and (delivery is not Delivery.EVENTFD or not is_int(eventfd)
                                    or eventfd < 0):
            raise XInterfaceError(errno.EBADF if delivery is Delivery.EVENTFD else errno.EINVAL,
                                  f"eventfd {eventfd!r} is not an fd for Delivery.EVENTFD",
                                  argument="eventfd", value=eventfd)
        if delivery is Delivery.EVENTFD:
            return self._eventfd_event(bus, addr, length, int(flags), signal, datamatch,
                                       eventfd)
        if delivery is Delivery.POSTED:
            cap = uapi.KVM_CAP_COALESCED_PIO if bus.space == "pio" else uapi.KVM_CAP_COALESCED_MMIO
            if not self.vm.has_cap(cap):
                raise XInterfaceError(errno.EOPNOTSUPP, f"the kernel lacks {CAP_NAMES[cap]}: no "
                                      f"POSTED delivery on the {bus.space} bus",
                                      argument="delivery", value=delivery)
        return self._register(XIOEvent(self, bus, addr, length, int(flags), signal, delivery))

    def _register(self, entry: E) -> E:
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
                       signal: Signal | None, datamatch: int | None,
                       eventfd: int | None = None) -> XIOEvent:
        if not self.vm.has_cap(uapi.KVM_CAP_IOEVENTFD):
            raise XInterfaceError(errno.EOPNOTSUPP, "the kernel lacks KVM_CAP_IOEVENTFD",
                                  argument="delivery", value=Delivery.EVENTFD)
        event = self._register(XIOEventFd(self, bus, addr, length, flags, datamatch, eventfd))
        event.signal = signal  # starts the event-loop thread's watch if set
        return event

    def irqfd(self, gsi: int, *, resample: bool = False,
              eventfd: int | None = None) -> XIrqfd:
        """An eventfd bound to interrupt line ``gsi`` (``KVM_IRQFD``): ``.trigger()`` raises
        it. ``resample=True`` for a level-triggered line: the line stays asserted until the
        guest's EOI, which signals ``.resamplefd``. ``eventfd``: bind this eventfd (one a
        peer process signals, such as a vhost-user call fd) instead of a new one; the irqfd
        keeps a duplicate, and an eventfd already bound on this VM is ``EBUSY``. Needs
        ``Machine(irqchip=True)``.
        """
        self._check()
        if not self.host.irqchip:
            raise XInterfaceError(errno.EOPNOTSUPP, "irqfd needs an in-kernel irqchip: "
                                  "Machine(irqchip=True)", argument="gsi", value=gsi)
        cap = uapi.KVM_CAP_IRQFD_RESAMPLE if resample else uapi.KVM_CAP_IRQFD
        if not self._kvm("gsi", gsi).has_cap(cap):
            raise XInterfaceError(errno.EOPNOTSUPP, f"the kernel lacks {CAP_NAMES[cap]}",
                                  argument="resample", value=resample)
        if not is_int(gsi) or not 0 <= gsi < 1 << 32:
            raise XInterfaceError(errno.EINVAL, f"gsi {gsi!r} is not an interrupt line",
                                  argument="gsi", value=gsi)
        if eventfd is not None and not is_int(eventfd):
            raise XInterfaceError(errno.EBADF, f"eventfd {eventfd!r} is not a file descriptor",
                                  argument="eventfd", value=eventfd)
        return self._register(XIrqfd(self, gsi, resample, eventfd))

    def set_irq(self, gsi: int, level: bool) -> None:
        """Drive interrupt line ``gsi`` of the in-kernel irqchip to ``level`` (``KVM_IRQ_LINE``).

        For level-triggered lines that a device holds asserted until the guest acknowledges
        the device (PCI INTx: asserted while the ISR is set, dropped when the guest reads it).
        An edge-triggered interrupt is a raise then a drop, or an irqfd's ``trigger()``.
        Needs ``Machine(irqchip=True)``.
        """
        self._check()
        if not self.host.irqchip:
            raise XInterfaceError(errno.EOPNOTSUPP, "set_irq needs an in-kernel irqchip: "
                                  "Machine(irqchip=True)", argument="gsi", value=gsi)
        if not is_int(gsi) or not 0 <= gsi < 1 << 32:
            raise XInterfaceError(errno.EINVAL, f"gsi {gsi!r} is not an interrupt line",
                                  argument="gsi", value=gsi)
        vm = self._kvm("gsi", gsi)
        try:
            vm.vmfd.irq_line(gsi, 1 if level else 0)
        except OSError as exc:
            raise XInterfaceError(exc.errno or errno.EINVAL, f"KVM_IRQ_LINE for gsi {gsi}: "
                                  f"{exc.strerror}", argument="gsi", value=gsi) from None

    def iorange(self, base: int, size: int, flags: int = 0, *, read: RangeRead | None = None,
                write: RangeWrite | None = None, name: str = "") -> XIORange:
        """A range device for device models: ``size`` bytes of port or MMIO space at ``base``.

        ``write(offset, payload)`` gets every write whose address falls in the range and no
        exact-match event took (return ``False`` to decline); ``read(offset, size)`` returns
        ``size`` bytes, or ``None`` to decline (the guest then reads all-ones).
        ``EEXIST`` if it overlaps another range device on the same bus.
        """
        bus, base, size = self._bus(base, size, flags)
        for role, call in (("read", read), ("write", write)):  # not `name`: the range's
            if call is not None and not callable(call):
                raise XInterfaceError(errno.EINVAL, f"{role} {call!r} is not callable",
                                      argument=role, value=call)
        if base + size > bus.limit:
            raise XInterfaceError(errno.EINVAL, f"base {base:#x} + size {size:#x} is past the "
                                  f"end of the {bus.space} bus", argument="size", value=size)
        return self._register(XIORange(self, bus, RangeDevice(base, size, read, write, name)))

    def _drop_io(self, entry: BusEntry) -> None:
        with self._lock:
            self._io.discard(entry)

    def _last_put(self) -> None:
        self.release()

    def release(self) -> None:
        """``ops->release``: runs once, on the last ``put`` (or when the machine closes)."""
        with self._release_lock:
            self.host.remove_client(self)
        self._run_release_hooks()

    def _run_release_hooks(self) -> None:
        """Each hook once, newest first; one that raises does not skip the others, and the
        first error is raised after them."""
        with self._release_lock:
            hooks, self._on_release = self._on_release, []
        first: Exception | None = None
        for hook in reversed(hooks):
            try:
                hook()
            except Exception as exc:
                first = first or exc
        if first is not None:
            raise first

    def on_release(self, hook: Callable[[], object]) -> None:
        """Call ``hook()`` when this interface is released (its last ``put``, or the VM
        closing): where a device closes what it holds outside the VM (an image file, a TAP)
        and stops its threads. Hooks run in reverse order of registration; when the VM
        closes they run before its entries are deassigned and its maps released, so a
        thread a hook stops still has valid views and irqfds until it is stopped."""
        self._check()
        if not callable(hook):
            raise XInterfaceError(errno.EINVAL, f"hook {hook!r} is not callable",
                                  argument="hook", value=hook)
        with self._release_lock:
            self._on_release.append(hook)

    def _add_map(self, m: GuestMap) -> None:
        self._maps.add(m)

    def _drop_map(self, m: GuestMap) -> None:
        self._maps.discard(m)

    def _vm_closing(self) -> None:
        """Tear down for closing the VM: run the release hooks, deassign every entry, release
        every map, then the interface itself.

        The hooks come first because they stop what uses the maps and entries from threads
        of its own (a device's iothread, a receive thread): each stops while its views,
        doorbells and irqfds are still valid, so no thread ever meets a released view or a
        closed irqfd, and none needs to survive one. A map whose view is still exported
        (e.g. to a NumPy array) raises BufferError and stays, and so does the interface, so
        close() can be retried once it is dropped (the hooks have run: they run once). A
        handler error raised while deassigning is raised after the whole teardown.
        """
        errors: list[Exception] = []
        try:
            self._run_release_hooks()
        except Exception as exc:
            errors.append(exc)
        for entry in list(self._io):
            try:
                entry.deassign()
            except Exception as exc:
                errors.append(exc)
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
        if errors:
            raise errors[0]

    def __enter__(self) -> XInterface:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._dead:
            self.put()



def bind(target: Vm | HasVm | int) -> XInterface:
    """``kvm_xinterface_bind``: an interface on a Vm, on a Machine (its ``.vm``), or on the VM
    fd of one of ours.

    ``EBADF`` for a closed fd or VM, ``EINVAL`` for an fd that is not one of our VMs.
    """
    vm: Vm | None
    if isinstance(target, Vm):
        vm = target
    elif is_int(target):
        if not 0 <= target < 1 << 31:
            raise XInterfaceError(errno.EBADF, f"fd {target} is not a file descriptor",
                                  argument="target", value=target)
        try:
            os.fstat(target)
        except OSError:
            raise XInterfaceError(errno.EBADF, f"fd {target} is not an open file descriptor",
                                  argument="target", value=target) from None
        vm = vm_for_fd(target)
        if vm is None:
            raise XInterfaceError(errno.EINVAL, f"fd {target} is not the VM fd of a Machine "
                                  "of this process", argument="target", value=target)
    else:
        vm = getattr(target, "vm", None)
        if not isinstance(vm, Vm):
            raise XInterfaceError(errno.EINVAL, f"target {target!r} is neither a Machine, a Vm "
                                  "nor a VM fd", argument="target", value=target)
    if vm.closed:
        raise XInterfaceError(errno.EBADF, "the machine is closed", argument="target",
                              value=target)
    return XInterface(vm)
