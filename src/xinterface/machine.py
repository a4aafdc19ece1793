"""The VMM: a KVM VM, its RAM, its buses, one thread per vCPU, and the run/stop protocol.

Stopping follows the kernel's documented protocol (Documentation/virt/kvm/api.rst,
``immediate_exit``): set ``immediate_exit`` in the vCPU's ``kvm_run``, then send the vCPU
thread a signal. Whether the thread is inside ``KVM_RUN`` or about to enter it, ``KVM_RUN``
returns ``EINTR`` and the exit loop sees the stop flag.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TextIO

from . import loader
from .delivery.eventfd import EventLoop
from .delivery.posted import CoalescedRing
from .errors import GuestError, GuestIOError, XInterfaceError
from .grace import Grace
from .iobus import IoBus
from .kvm import Kvm, uapi
from .memory import GuestMemory, layout_from
from .trace import TracingBus
from .vcpu_loop import Bus, VcpuLoop

PIO_LIMIT = 1 << 16   # x86 port space
MMIO_LIMIT = 1 << 64  # guest-physical address space as KVM reports it
# QEMU's layout for the TSS and identity-map pages that VMX needs for real mode: below the
# BIOS, above any RAM of the default layout.
IDENTITY_MAP_ADDR = 0xFEFFC000
TSS_ADDR = 0xFEFFD000
KICK_SIGNAL = signal.SIGRTMIN + 1

_machines: weakref.WeakValueDictionary[int, Machine] = weakref.WeakValueDictionary()


class Client(Protocol):
    """What close() needs of a bound xinterface: tear down, or raise BufferError."""

    def _machine_closing(self) -> None: ...


def machine_for_fd(fd: int) -> Machine | None:
    """The live Machine of this process whose VM fd is ``fd``."""
    return _machines.get(fd)


def _ignore_kick(signum: int, frame: object) -> None:
    """The kick's only job is to interrupt KVM_RUN with EINTR."""


def _install_kick_handler() -> None:
    # A handler (not SIG_IGN) is needed: an ignored signal is discarded and never interrupts
    # KVM_RUN. Python allows installing handlers only from the main thread.
    if signal.getsignal(KICK_SIGNAL) is _ignore_kick:
        return
    if threading.current_thread() is not threading.main_thread():
        raise XInterfaceError(
            errno.EINVAL, "the first Machine must be created (or xinterface imported) on the "
            "main thread, which installs the vCPU kick signal handler",
            argument="thread", value=threading.current_thread().name)
    signal.signal(KICK_SIGNAL, _ignore_kick)


if threading.current_thread() is threading.main_thread():
    _install_kick_handler()


@dataclass(frozen=True)
class RunResult:
    """How a run ended.

    ``reason``: ``"hlt"`` (every vCPU halted), ``"exit"`` (debug-exit port; ``exit_code`` set),
    ``"shutdown"`` / ``"reset"`` (a KVM system event), ``"stopped"`` (``stop()``), ``"timeout"``.
    ``exits`` counts the vCPU exits of this run by kind (``"io"``, ``"mmio"``, ``"hlt"``, ...).
    """

    reason: str
    exit_code: int | None = None
    exits: Counter[str] = field(default_factory=Counter)


class Machine:
    """A virtual machine with ``memory`` bytes of RAM (or ``(gpa, size)`` regions) and vCPUs.

    >>> with Machine(memory=1 << 20) as m:          # doctest: +SKIP
    ...     m.load_flat(image, gpa=0x1000, mode="real")
    ...     m.run(timeout=5.0).reason
    'hlt'
    """

    def __init__(
        self,
        memory: int | Sequence[tuple[int, int]] = 64 << 20,
        vcpus: int = 1,
        *,
        strict: bool = False,
        irqchip: bool = False,
        console: BinaryIO | None = None,
        trace: TextIO | None = None,
        debug_ports: bool = True,
    ) -> None:
        self._closed = True  # until fully built, close() has only what exists to release
        self.strict = strict
        self.irqchip = irqchip
        self.console = console
        self.trace = trace
        self._kvm: Kvm | None = None
        self.memory: GuestMemory | None = None
        self.vcpus: list[VcpuLoop] = []
        self._lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._all_done = threading.Event()
        self._live = 0
        self._stopping = False
        self._reason: str | None = None
        self._exit_code: int | None = None
        self._error: BaseException | None = None
        self.grace = Grace()
        self.pio_bus = IoBus("pio", PIO_LIMIT, self.grace)
        self.mmio_bus = IoBus("mmio", MMIO_LIMIT, self.grace)
        self._clients: list[Client] = []
        self.ring: CoalescedRing | None = None
        self._drain_slot = self.grace.slot()
        self._event_loop: EventLoop | None = None
        self._caps: dict[int, int] = {}
        _install_kick_handler()
        layout = layout_from(memory)
        self._kvm = kvm = Kvm()
        self._closed = False
        try:
            self._check_vcpus(vcpus)
            self.vm = kvm.create_vm()
            if kvm.check_extension(uapi.KVM_CAP_SET_IDENTITY_MAP_ADDR):
                self.vm.set_identity_map_addr(IDENTITY_MAP_ADDR)
            if kvm.check_extension(uapi.KVM_CAP_SET_TSS_ADDR):
                self.vm.set_tss_addr(TSS_ADDR)
            if irqchip:
                self.vm.create_irqchip()
                self.vm.create_pit2(uapi.KVM_PIT_SPEAKER_DUMMY)
            self.memory = GuestMemory(self.vm, layout)
            cpuid = kvm.get_supported_cpuid()
            for index in range(vcpus):
                vcpu = self.vm.create_vcpu(index)
                self.vcpus.append(VcpuLoop(self, vcpu, self.grace.slot()))
                vcpu.set_cpuid2(_cpuid_for(cpuid, index))
            # One ring per VM; every vCPU maps it, vCPU 0's mapping serves.
            self.ring = CoalescedRing(self.vcpus[0].vcpu.run_mmap)
        except BaseException:
            self.close()
            raise
        _machines[self.vm.fd] = self
        if debug_ports:
            # The debug ports are ordinary xinterface clients; imported here because devices
            # sit above the machine in the layering.
            from .devices.debug import attach_debug_ports

            try:
                attach_debug_ports(self)
            except BaseException:
                self.close()
                raise

    def _check_vcpus(self, vcpus: int) -> None:
        assert self._kvm is not None
        limit = (self._kvm.check_extension(uapi.KVM_CAP_MAX_VCPUS)
                 or self._kvm.check_extension(uapi.KVM_CAP_NR_VCPUS) or 4)
        if isinstance(vcpus, bool) or not isinstance(vcpus, int) or not 1 <= vcpus <= limit:
            raise XInterfaceError(errno.EINVAL, f"vcpus {vcpus!r} must be an int from 1 to "
                                  f"{limit} (KVM_CAP_MAX_VCPUS)", argument="vcpus", value=vcpus)

    # --- properties -----------------------------------------------------------------------
    @property
    def fd(self) -> int:
        """The VM file descriptor, as ``bind()`` accepts it."""
        self._check_open()
        return self.vm.fd

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise XInterfaceError(errno.EBADF, "the machine is closed", argument="machine",
                                  value=self)

    def buses(self) -> tuple[Bus, Bus]:
        """The PIO and MMIO buses as the exit loop sees them (wrapped when tracing)."""
        if self.trace is None:
            return self.pio_bus, self.mmio_bus
        return (TracingBus(self.pio_bus, "pio", self.trace),
                TracingBus(self.mmio_bus, "mmio", self.trace))

    def write_paths(self) -> tuple[dict[int, Any], Callable[[int, bytes], bool],
                                   dict[int, Any], Callable[[int, bytes], bool]]:
        """For the exit loop's write fast path: each bus's event table and the call for
        whatever no event takes. When tracing, empty tables send everything through the
        tracing bus."""
        pio, mmio = self.buses()
        if self.trace is not None:
            return {}, pio.write, {}, mmio.write
        return (self.pio_bus.events, self.pio_bus.write_ranges,
                self.mmio_bus.events, self.mmio_bus.write_ranges)

    # --- loading --------------------------------------------------------------------------
    def load_flat(self, image: bytes, gpa: int = 0x1000, mode: str = "real") -> None:
        """Place ``image`` at ``gpa`` and start every vCPU there in ``mode``."""
        self._check_open()
        assert self.memory is not None
        loader.load_flat(self.memory, [v.vcpu for v in self.vcpus], bytes(image), gpa, mode)

    def load_firmware(self, firmware: str | os.PathLike[str] | bytes) -> None:
        """Map a firmware image (a path, or its bytes) as the platform does; vCPU 0 starts
        from the reset vector. See :mod:`xinterface.loader.firmware`."""
        self._check_open()
        assert self.memory is not None
        data = bytes(firmware) if isinstance(firmware, bytes | bytearray) else (
            Path(firmware).read_bytes())
        loader.load_firmware(self.memory, self.vcpus[0].vcpu, data)

    # --- running --------------------------------------------------------------------------
    def run(self, timeout: float | None = None, *, poll: float | None = None) -> RunResult:
        """Run every vCPU from where it is until they all halt or the run is ended.

        ``poll``: also drain the POSTED ring every ``poll`` seconds from a poller thread (it
        is drained at every exit and when the run ends anyway).
        Raises the error that stopped the run (``GuestError``, a handler's exception).
        """
        self._check_open()
        if not self._run_lock.acquire(blocking=False):
            raise XInterfaceError(errno.EBUSY, "the machine is already running",
                                  argument="machine", value=self)
        try:
            return self._run(timeout, poll)
        finally:
            self._run_lock.release()

    def _run(self, timeout: float | None, poll: float | None) -> RunResult:
        if self._error is not None:  # a handler failed between runs (the EVENTFD thread)
            error, self._error = self._error, None
            raise error
        self._stopping = False
        self._reason = self._exit_code = None
        self._all_done.clear()
        before = [list(loop.counts) for loop in self.vcpus]
        self._live = len(self.vcpus)
        threads = []
        for loop in self.vcpus:
            loop.set_immediate_exit(0)
            threads.append(threading.Thread(target=loop.run, name=f"vcpu{loop.index}",
                                            daemon=True))
        poller = None
        if poll is not None:
            poller = threading.Thread(target=self._poll, args=(poll,), name="xinterface-poll",
                                      daemon=True)
        try:
            for thread in threads:
                thread.start()
            if poller is not None:
                poller.start()
            if not self._all_done.wait(timeout):
                self._request_stop("timeout")
        finally:
            # Also on KeyboardInterrupt: never leave vCPU threads running behind the caller.
            self._request_stop("stopped")
            for thread in threads:
                thread.join()
            if poller is not None and poller.is_alive():
                poller.join()
            if self._error is None:
                try:
                    self.flush()  # posted writes of this run reach their handlers before we return
                except BaseException as exc:
                    self._error = exc
            self._flush_console()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        exits: Counter[str] = Counter()
        for loop, old in zip(self.vcpus, before, strict=False):
            for code, (now, then) in enumerate(zip(loop.counts, old, strict=True)):
                if now != then:
                    exits[uapi.EXIT_REASON_NAMES.get(code, str(code)).lower()] += now - then
        reason = self._reason or "stopped"
        if reason == "stopped" and all(loop.halted for loop in self.vcpus):
            reason = "hlt"
        return RunResult(reason, self._exit_code, exits)

    # --- POSTED and EVENTFD delivery -----------------------------------------------------------
    def has_cap(self, cap: int) -> int:
        """``KVM_CHECK_EXTENSION`` on the VM, cached."""
        if cap not in self._caps:
            self._caps[cap] = self.vm.check_extension(cap)
        return self._caps[cap]

    def flush(self) -> int:
        """Deliver every posted write waiting in the coalesced ring, in order; how many."""
        ring = self.ring
        if ring is None or not ring.pending():
            return 0
        with ring.lock:
            slot = self._drain_slot
            inside = slot.count & 1
            if not inside:
                slot.thread_id = threading.get_ident()
                slot.count += 1
            try:
                return ring.drain(self._dispatch_posted)
            finally:
                if not inside:
                    slot.count += 1

    def _drain_from_vcpu(self, loop: VcpuLoop) -> None:
        """Drain on a vCPU thread, inside its own grace slot; a handler error names it."""
        assert self.ring is not None
        slot = loop.slot
        inside = slot.count & 1
        if not inside:
            slot.count += 1
        try:
            self.ring.drain(self._dispatch_posted)
        except GuestError:
            raise
        except Exception as exc:
            raise GuestIOError(f"the handler of a posted write raised {type(exc).__name__}: "
                               f"{exc}", vcpu=loop.index, space="posted", addr=0,
                               length=0) from exc
        finally:
            if not inside:
                slot.count += 1

    def _dispatch_posted(self, pio: int, addr: int, data: bytes) -> None:
        bus = self.pio_bus if pio else self.mmio_bus
        if not bus.write(addr, data) and self.strict:
            where = f"port {addr:#x}" if pio else f"MMIO address {addr:#x}"
            raise GuestIOError(f"unhandled posted {len(data)}-byte write to {where} (strict "
                               "mode)", vcpu=-1, space=bus.space, addr=addr, length=len(data))

    def _poll(self, interval: float) -> None:
        while not self._stopping:
            try:
                self.flush()
            except BaseException as exc:
                self._fail(exc)
                return
            time.sleep(interval)

    def event_loop(self) -> EventLoop:
        """The epoll thread of EVENTFD events, started on first use."""
        with self._lock:
            self._check_open()
            if self._event_loop is None:
                self._event_loop = EventLoop(self.grace, self._fail)
            return self._event_loop

    def stop(self) -> None:
        """End the current run from any thread; ``run()`` returns reason ``"stopped"``."""
        self._request_stop("stopped")

    def request_reset(self) -> None:
        """End the current run with reason ``"reset"`` (the guest asked for a reset)."""
        self._request_stop("reset")

    def exit(self, status: int) -> None:
        """End the current run with reason ``"exit"`` and ``exit_code=status``."""
        self._request_stop("exit", status)

    def _request_stop(self, reason: str, exit_code: int | None = None) -> None:
        me = threading.get_ident()
        with self._lock:
            if self._reason is None and self._live:
                self._reason, self._exit_code = reason, exit_code
            self._stopping = True
            for loop in self.vcpus:
                loop.set_immediate_exit(1)
                if loop.thread_id is not None and loop.thread_id != me:
                    signal.pthread_kill(loop.thread_id, KICK_SIGNAL)

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = exc
        self._request_stop("error")

    def _vcpu_done(self, loop: VcpuLoop) -> None:
        with self._lock:
            # After this, stop() never signals the thread: its id may be reused.
            loop.thread_id = None
            self._live -= 1
            if self._live == 0:
                self._all_done.set()

    def _flush_console(self) -> None:
        out = self.console if self.console is not None else sys.stdout.buffer
        # A closed or broken console must not turn a finished run into an error.
        with contextlib.suppress(OSError, ValueError):
            out.flush()

    # --- clients -------------------------------------------------------------------------
    def _attach(self, client: Client) -> None:
        with self._lock:
            self._check_open()
            self._clients.append(client)

    def _detach(self, client: Client) -> None:
        with self._lock:
            if client in self._clients:
                self._clients.remove(client)

    # --- teardown -------------------------------------------------------------------------
    def close(self) -> None:
        """Stop any run, tear down every client, release every fd, mapping and thread.

        Harmless to call twice. A client's map still exported to another buffer raises
        ``BufferError`` naming it; the machine then stays open so close() can be retried.
        """
        if self._closed and self._kvm is None:
            return
        if self._live:
            self._request_stop("stopped")
            self._all_done.wait()
        with self._run_lock:
            for client in list(self._clients):
                client._machine_closing()
            self._closed = True
            if self._event_loop is not None:
                self._event_loop.close()
                self._event_loop = None
            if self.ring is not None:
                self.ring.release()
                self.ring = None
            vm = getattr(self, "vm", None)
            if vm is not None:
                _machines.pop(vm.fd, None)
            for loop in self.vcpus:
                loop.release()
                loop.vcpu.close()
            self.vcpus = []
            if vm is not None:
                vm.close()
            if self.memory is not None:
                self.memory.close()
                self.memory = None
            if self._kvm is not None:
                self._kvm.close()
                self._kvm = None

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
