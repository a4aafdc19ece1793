"""The VM the xinterface binds to: the seed's ``struct kvm``, apart from whoever runs it.

One :class:`Vm` holds the KVM VM fd and its vCPU fds, guest memory, the PIO and MMIO buses
with their grace periods, the coalesced ring (POSTED) and the eventfd thread (EVENTFD),
the capabilities probed once, and the registry of bound clients. It runs nothing: whoever
runs it (:class:`xinterface.runner.machine.Machine`) hands it a
:class:`~xinterface.runstate.RunControl`, which the VM hands on to devices
(``intf.vm.run_control``): that is how a device ends a run without knowing the runner.
"""

from __future__ import annotations

import errno
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import NoReturn, Protocol

from .checks import is_int
from .delivery.eventfd import EventLoop
from .delivery.posted import CoalescedRing
from .errors import GuestError, GuestIOError, XInterfaceError
from .grace import Grace, ReaderSlot
from .iobus import IoBus
from .kvm import Kvm, VcpuFd, VmFd, uapi
from .memory import GuestMemory, layout_from
from .runstate import RunControl

# (KVM's supported CPUID, vCPU index) -> that vCPU's CPUID entries.
CpuidFn = Callable[[list[uapi.kvm_cpuid_entry2], int], list[uapi.kvm_cpuid_entry2]]

PIO_LIMIT = 1 << 16   # x86 port space
MMIO_LIMIT = 1 << 64  # guest-physical address space as KVM reports it
# QEMU's layout for the TSS and identity-map pages that VMX needs for real mode: below the
# BIOS, above any RAM of the default layout.
IDENTITY_MAP_ADDR = 0xFEFFC000
TSS_ADDR = 0xFEFFD000

_vms: weakref.WeakValueDictionary[int, Vm] = weakref.WeakValueDictionary()


class Client(Protocol):
    """What closing the VM needs of a bound xinterface: tear down, or raise BufferError (and
    stay); a handler error raised while tearing down comes after the teardown is complete."""

    def _vm_closing(self) -> None: ...


def vm_for_fd(fd: int) -> Vm | None:
    """The live Vm of this process whose VM fd is ``fd``."""
    return _vms.get(fd)


class Vm:
    """A KVM VM with ``memory`` bytes of RAM (or ``(gpa, size)`` regions) and ``vcpus`` vCPU fds.

    ``irqchip``: the in-kernel PIC, IOAPIC, local APICs and PIT (needed for irqfd).
    ``strict``: an access nobody claims is an error instead of all-ones / dropped.
    ``cpuid(supported, index)``: the CPUID entries of vCPU ``index`` from KVM's supported set
    (a CPU template of :mod:`xinterface.loader.cpuid`); by default the supported set with the
    vCPU's APIC id.
    ``run_control``: how devices end a run (:attr:`run_control`); by default one that does
    nothing, for a VM nobody runs.
    """

    def __init__(self, memory: int | Sequence[tuple[int, int]] = 64 << 20, vcpus: int = 1, *,
                 irqchip: bool = False, strict: bool = False,
                 cpuid: CpuidFn | None = None, run_control: RunControl | None = None) -> None:
        self._closed = True  # until fully built, close() has only what exists to release
        self.irqchip = irqchip
        self.strict = strict
        # What devices end a run through, handed to them at attach (intf.vm.run_control).
        self.run_control = run_control if run_control is not None else RunControl()
        self._kvm: Kvm | None = None
        self._vmfd: VmFd | None = None
        self.memory: GuestMemory | None = None
        self.vcpus: list[VcpuFd] = []
        self.ring: CoalescedRing | None = None
        self._lock = threading.Lock()
        self.grace = Grace()
        self.pio_bus = IoBus("pio", PIO_LIMIT, self.grace)
        self.mmio_bus = IoBus("mmio", MMIO_LIMIT, self.grace)
        self._clients: list[Client] = []
        self._drain_slot = self.grace.slot()
        self._event_loop: EventLoop | None = None
        self._caps: dict[int, int] = {}
        layout = layout_from(memory)
        self._kvm = kvm = Kvm()
        self._closed = False
        try:
            self._check_vcpus(vcpus)
            self._vmfd = vmfd = kvm.create_vm()
            if kvm.check_extension(uapi.KVM_CAP_SET_IDENTITY_MAP_ADDR):
                vmfd.set_identity_map_addr(IDENTITY_MAP_ADDR)
            if kvm.check_extension(uapi.KVM_CAP_SET_TSS_ADDR):
                vmfd.set_tss_addr(TSS_ADDR)
            if irqchip:
                vmfd.create_irqchip()
                vmfd.create_pit2(uapi.KVM_PIT_SPEAKER_DUMMY)
            self.memory = GuestMemory(vmfd, layout)
            supported = kvm.get_supported_cpuid()
            make_cpuid = cpuid or _cpuid_for
            for index in range(vcpus):
                vcpu = vmfd.create_vcpu(index)
                self.vcpus.append(vcpu)
                vcpu.set_cpuid2(make_cpuid(supported, index))
            # One ring per VM; every vCPU maps it, vCPU 0's mapping serves.
            self.ring = CoalescedRing(self.vcpus[0].run_mmap, self.grace,
                                      (self.pio_bus, self.mmio_bus))
        except BaseException:
            self.close()
            raise
        _vms[vmfd.fd] = self

    def _check_vcpus(self, vcpus: int) -> None:
        assert self._kvm is not None
        limit = (self._kvm.check_extension(uapi.KVM_CAP_MAX_VCPUS)
                 or self._kvm.check_extension(uapi.KVM_CAP_NR_VCPUS) or 4)
        if not is_int(vcpus) or not 1 <= vcpus <= limit:
            raise XInterfaceError(errno.EINVAL, f"vcpus {vcpus!r} must be an int from 1 to "
                                  f"{limit} (KVM_CAP_MAX_VCPUS)", argument="vcpus", value=vcpus)

    # --- identity ---------------------------------------------------------------------------
    @property
    def fd(self) -> int:
        """The VM file descriptor, as ``bind()`` accepts it."""
        return self.vmfd.fd

    @property
    def vmfd(self) -> VmFd:
        """The KVM VM fd object: one method per VM ioctl."""
        self.check_open()
        assert self._vmfd is not None
        return self._vmfd

    @property
    def closed(self) -> bool:
        return self._closed

    def check_open(self) -> None:
        if self._closed:
            raise XInterfaceError(errno.EBADF, "the machine is closed", argument="machine",
                                  value=self)

    def has_cap(self, cap: int) -> int:
        """``KVM_CHECK_EXTENSION`` on the VM, cached."""
        if cap not in self._caps:
            self._caps[cap] = self.vmfd.check_extension(cap)
        return self._caps[cap]

    # --- POSTED and EVENTFD delivery ----------------------------------------------------------
    def flush(self) -> int:
        """Deliver every posted write waiting in the coalesced ring, in order; how many.

        A handler's exception is raised as ``GuestIOError`` naming the write, with the
        handler's exception as ``__cause__``.
        """
        ring = self.ring
        if ring is None or not ring.pending():
            return 0
        return ring.drain(self._posted_unclaimed, self._posted_failed, slot=self._drain_slot)

    def drain_posted(self, slot: ReaderSlot, vcpu: int) -> None:
        """Drain on a vCPU thread, inside that thread's grace ``slot``."""
        assert self.ring is not None
        inside = slot.count & 1
        if not inside:
            slot.count += 1
        try:
            self.ring.drain(self._posted_unclaimed, self._posted_failed)
        finally:
            if not inside:
                slot.count += 1

    def _posted_unclaimed(self, pio: int, addr: int, data: bytes) -> None:
        """A posted write nobody claimed: dropped, or a stop when the machine is strict."""
        if self.strict:
            bus = self.pio_bus if pio else self.mmio_bus
            raise GuestIOError(f"unhandled posted {len(data)}-byte write to "
                               f"{_where(pio, addr)} (strict mode)", vcpu=-1, space=bus.space,
                               addr=addr, length=len(data))

    def _posted_failed(self, pio: int, addr: int, data: bytes, exc: BaseException) -> NoReturn:
        """A posted write's handler raised ``exc``: raise it as a ``GuestIOError`` naming the
        write (the ring's drain calls it, Python's and the compiled one)."""
        if isinstance(exc, GuestError) or not isinstance(exc, Exception):
            raise exc
        bus = self.pio_bus if pio else self.mmio_bus
        raise GuestIOError(f"the handler of a posted {len(data)}-byte write to "
                           f"{_where(pio, addr)} raised {type(exc).__name__}: {exc}",
                           vcpu=-1, space=bus.space, addr=addr, length=len(data)) from exc

    def event_loop(self) -> EventLoop:
        """The epoll thread of EVENTFD events, started on first use."""
        with self._lock:
            self.check_open()
            if self._event_loop is None:
                self._event_loop = EventLoop(self.grace, self.run_control.fail)
            return self._event_loop

    # --- clients -------------------------------------------------------------------------
    def add_client(self, client: Client) -> None:
        with self._lock:
            self.check_open()
            self._clients.append(client)

    def remove_client(self, client: Client) -> None:
        with self._lock:
            if client in self._clients:
                self._clients.remove(client)

    def close_clients(self) -> BaseException | None:
        """Tear down every bound client; the first handler error this raised, if any.

        Deassigning a POSTED event delivers what the ring still holds for it, so a handler
        may fail here: every client is torn down all the same, and the error is returned.
        ``BufferError`` if a map is still exported; the VM then stays open so this can be
        retried.
        """
        first: BaseException | None = None
        for client in list(self._clients):
            try:
                client._vm_closing()
            except BufferError:
                raise
            except Exception as exc:
                first = first or exc
        return first

    # --- teardown -------------------------------------------------------------------------
    def close(self) -> None:
        """Tear down every client, release every fd, mapping and thread. Harmless twice.

        The runner stops its vCPU threads and drops its views of their ``kvm_run`` pages
        first. A handler error raised while the clients are torn down (``GuestIOError``) is
        raised once everything is released. ``EDEADLK`` from a handler of this VM: closing
        would tear the VM down under the dispatch in progress.
        """
        if self._closed and self._kvm is None:
            return
        if self.grace.inside():
            raise XInterfaceError(errno.EDEADLK, "close() from a handler of this VM would "
                                  "release it under the handler's own dispatch; stop the run "
                                  "and close after it", argument="self", value=self)
        error = self.close_clients()
        self._closed = True
        if self._event_loop is not None:
            self._event_loop.close()
            self._event_loop = None
        if self.ring is not None:
            self.ring.release()
            self.ring = None
        if self._vmfd is not None:
            _vms.pop(self._vmfd.fd, None)
        for vcpu in self.vcpus:
            vcpu.close()
        self.vcpus = []
        if self._vmfd is not None:
            self._vmfd.close()
            self._vmfd = None
        if self.memory is not None:
            self.memory.close()
            self.memory = None
        if self._kvm is not None:
            self._kvm.close()
            self._kvm = None
        if error is not None:
            raise error

    def __enter__(self) -> Vm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _where(pio: int, addr: int) -> str:
    # vcpu -1 in the errors above: the ring does not record which vCPU wrote.
    return f"port {addr:#x}" if pio else f"MMIO address {addr:#x}"


def _cpuid_for(supported: list[uapi.kvm_cpuid_entry2], index: int) -> list[uapi.kvm_cpuid_entry2]:
    """KVM's supported CPUID with ``index`` as the initial APIC id, so guests tell vCPUs apart."""
    out = []
    for entry in supported:
        e = uapi.kvm_cpuid_entry2.from_buffer_copy(entry)
        if e.function == 1:
            e.ebx = (e.ebx & 0x00FFFFFF) | (index << 24)   # CPUID.01H:EBX[31:24]
        elif e.function in (0xB, 0x1F):
            e.edx = index                                  # x2APIC id of the topology leaves
        out.append(e)
    return out
