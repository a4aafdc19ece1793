"""The exit loop of one vCPU thread: ``KVM_RUN``, dispatch the exit, resume.

Two implementations of one loop, chosen by :mod:`xinterface.backend`:

- the Python loop (:meth:`VcpuLoop._exits_python`), the reference: its hot path (a single
  PIO/MMIO write) binds everything it touches to locals, uses precompiled ``struct`` objects
  and reads the exit reason through a ``memoryview`` of the shared ``kvm_run`` page;
- the compiled loop (``xinterface._fastloop``, :meth:`VcpuLoop._exits_compiled`): the same
  steps in C for single PIO/MMIO reads and writes, returning to this module for every other
  exit, for ``EINTR``, and for an access strict mode refuses.

Both count exits in ``counts``, drain the coalesced ring before any exit is handled, and keep
the grace-period slot odd exactly while a handler (event, range device, read) runs.

``KVM_RUN`` must hand ``EINTR`` back to Python: that is how a stop reaches a vCPU thread (see
:func:`kvm_run_ioctl` and :mod:`xinterface.machine`). The compiled loop calls libc's ``ioctl``
itself and returns every ``EINTR`` to :meth:`VcpuLoop._exits_compiled`.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any, Protocol

from . import backend
from .delivery.posted import CoalescedRing
from .errors import GuestError, GuestIOError
from .grace import ReaderSlot
from .iobus import Bus, IoBus
from .kvm import VcpuFd, uapi
from .memory import GuestMemory

# kvm_run offsets (checked against <linux/kvm.h> via the ctypes layout in tests/kvm).
_RUN_EXIT_REASON_WORD = uapi.kvm_run.exit_reason.offset // 4
_RUN_UNION = uapi.kvm_run.u.offset
_IO = struct.Struct("<BBHIQ")      # direction, size, port, count, data_offset
_MMIO = struct.Struct("<Q8sIB")    # phys_addr, data[8], len, is_write
_MMIO_DATA = _RUN_UNION + 8
_FAIL_ENTRY = struct.Struct("<QI")
_INTERNAL = struct.Struct("<II16Q")
_SYSTEM_EVENT = struct.Struct("<II")

_EXIT_MASK = 0xFF  # exit reasons are small integers; counts is indexed by them

# CPython 3.14 made fcntl.ioctl retry a call that fails with EINTR by itself (gh-132742:
# "System calls failing with EINTR are automatically retried"). Off the main thread no signal
# handler runs to end that retry, so a KVM_RUN kicked by stop() would be entered again, fail
# again with EINTR (immediate_exit is set), and so on: the thread would never see the stop.
# There KVM_RUN goes through libc's ioctl (ctypes), which returns EINTR like any error.
FCNTL_IOCTL_RETRIES_EINTR = sys.version_info >= (3, 14)

# (fd, request) -> 0, or raises OSError (InterruptedError for EINTR); the argument is 0.
RunIoctl = Callable[[int, int], object]
_libc_ioctl: Callable[[int, int, int], int] | None = None


def kvm_run_ioctl() -> RunIoctl:
    """The call the Python loop enters ``KVM_RUN`` with: one that never retries ``EINTR``."""
    global _libc_ioctl
    if not FCNTL_IOCTL_RETRIES_EINTR:
        # Without a third argument: CPython <= 3.13 tries an int third argument as a
        # writable, then a read-only buffer first, raising and clearing a TypeError each time
        # (about 1 us); without one it passes 0, which KVM_RUN requires (kvm_vcpu_ioctl fails
        # it with EINVAL on any other value).
        return fcntl.ioctl
    if _libc_ioctl is None:
        call = ctypes.CDLL(None, use_errno=True).ioctl
        call.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong)
        call.restype = ctypes.c_int
        call.errcheck = _raise_errno
        _libc_ioctl = call
    libc_ioctl = _libc_ioctl
    return lambda fd, request: libc_ioctl(fd, request, 0)


def _raise_errno(result: Any, func: Any, args: Any) -> Any:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))  # OSError(EINTR, ...) is an InterruptedError
    return result


def _stock_bus(write: Callable[[int, bytes], bool]) -> IoBus | None:
    """The bus whose ``write_ranges`` this is, which the compiled loop then does in C (the
    same lookup, without a Python frame per write); None for any other call (tracing)."""
    bus = getattr(write, "__self__", None)
    if isinstance(bus, IoBus) and getattr(write, "__func__", None) is IoBus.write_ranges:
        return bus
    return None


class LoopOwner(Protocol):
    """What a vCPU thread needs of whoever runs it: the whole contract, for this loop and any
    other implementation of it (a compiled loop keeps the same one).

    ``stopping`` is read before every ``KVM_RUN``; ``request_stop`` is the one way to end
    the run of every vCPU (a reason, the exit code of a debug exit, or the error that ended
    it); ``park`` is where a thread that left its loop for a pause waits (True: run again);
    ``vcpu_done`` is the thread's last call.

    A stop reaches a thread in ``KVM_RUN`` as ``EINTR``: the owner sets ``immediate_exit``
    and signals the thread, and ``KVM_RUN`` is entered through :func:`kvm_run_ioctl` (or the
    compiled loop's own ``ioctl``), which never retries ``EINTR``. The owner sets
    ``stopping`` back to false only when it starts a run, before any loop thread of that run
    exists, or resumes a paused one, whose threads are all parked: a stop is never lost.
    """

    @property
    def stopping(self) -> bool: ...
    @property
    def strict(self) -> bool: ...
    @property
    def memory(self) -> GuestMemory | None: ...
    def buses(self) -> tuple[Bus, Bus]: ...
    def write_paths(self) -> tuple[dict[int, Any], Callable[[int, bytes], bool],
                                   dict[int, Any], Callable[[int, bytes], bool]]: ...
    def drain_posted(self, loop: VcpuLoop) -> None: ...
    def request_stop(self, reason: str, exit_code: int | None = None,
                     error: BaseException | None = None) -> None: ...
    def park(self, loop: VcpuLoop) -> bool: ...
    def vcpu_done(self, loop: VcpuLoop) -> None: ...


class VcpuLoop:
    """Runs one vCPU until it halts or the machine stops. ``counts[reason]`` counts exits.

    ``slot`` is this thread's grace-period reader slot; ``ring`` the VM's coalesced ring,
    drained (through ``owner.drain_posted``) before any exit is handled.
    """

    def __init__(self, owner: LoopOwner, vcpu: VcpuFd, slot: ReaderSlot,
                 ring: CoalescedRing) -> None:
        self.owner = owner
        self.vcpu = vcpu
        self.slot = slot
        self.ring = ring
        self.index = vcpu.index
        self.counts = [0] * (_EXIT_MASK + 1)
        self.halted = False
        self.emulated = 0
        self.thread_id: int | None = None
        self.run_ioctl = kvm_run_ioctl()
        self.native_exits = 0  # exits the compiled loop served without returning to Python
        self._buses: tuple[Bus, Bus] = owner.buses()
        self._paths = owner.write_paths()
        self._strict = False
        self._words = memoryview(vcpu.run_mmap).cast("I")

    def release(self) -> None:
        """Drop the view of the kvm_run page so the vCPU's mmap can be closed."""
        self._words.release()

    def set_immediate_exit(self, value: int) -> None:
        self.vcpu.run_mmap[uapi.kvm_run.immediate_exit.offset] = value

    def run(self) -> None:
        """The thread body: the exit loop until this vCPU halts or the run ends, parked
        between loops while the run is paused. Errors end the run; ``run()`` re-raises them."""
        self.thread_id = self.slot.thread_id = threading.get_ident()
        try:
            while True:
                self._loop()
                # Out of KVM_RUN for a stop or a pause: the owner says which.
                if self.halted or not self.owner.park(self):
                    break
        except BaseException as exc:  # handed to Machine.run(), which re-raises it
            self.owner.request_stop("error", None, exc)
        finally:
            self.slot.leave_if_inside()
            self.slot.thread_id = None
            self.owner.vcpu_done(self)

    def _loop(self) -> None:
        try:
            self._exits()
        except GuestError:
            raise
        except Exception as exc:
            if not self.slot.count & 1:
                raise  # not raised by a handler: a bug of ours, shown as it is
            # The access is still described by the kvm_run page: decode it only now, so the
            # hot path stores nothing per exit for the sake of this message.
            mm = self.vcpu.run_mmap
            if self._words[_RUN_EXIT_REASON_WORD] == uapi.KVM_EXIT_IO:
                _, size, addr, _, _ = _IO.unpack_from(mm, _RUN_UNION)
                space, where = "pio", f"port {addr:#x}"
            else:
                addr, _, size, _ = _MMIO.unpack_from(mm, _RUN_UNION)
                space, where = "mmio", f"MMIO address {addr:#x}"
            raise GuestIOError(
                f"the handler of a {size}-byte access to {where} raised "
                f"{type(exc).__name__}: {exc}", vcpu=self.index, space=space, addr=addr,
                length=size) from exc

    def _exits(self) -> None:
        self.halted = False
        # Read once a run: the buses (wrapped when tracing), the write paths, strictness.
        self._buses = self.owner.buses()
        self._paths = self.owner.write_paths()
        self._strict = self.owner.strict
        fast = backend.fastloop
        if fast is not None:
            self._exits_compiled(fast)
        else:
            self._exits_python()

    def _exits_python(self) -> None:
        """The reference loop. Its write path is :meth:`_write` inlined: the one place where
        a few dozen bytecodes per exit show next to the exit itself."""
        owner = self.owner
        fd = self.vcpu.fd
        mm = self.vcpu.run_mmap
        words = self._words
        counts = self.counts
        ioctl = self.run_ioctl  # returns EINTR to us on every Python (see kvm_run_ioctl)
        kvm_run = uapi.KVM_RUN
        exit_io, exit_mmio = uapi.KVM_EXIT_IO, uapi.KVM_EXIT_MMIO
        unpack_io = _IO.unpack_from
        unpack_mmio = _MMIO.unpack_from
        # Writes: the exact-match event is looked up here, saving a call per exit; the rest
        # is IoBus.write_ranges. Same semantics as IoBus.write (see there).
        pio_events, pio_ranges, mmio_events, mmio_ranges = self._paths
        strict = self._strict
        slot = self.slot
        ring = self.ring
        drain = owner.drain_posted
        reason_word, union, mask = _RUN_EXIT_REASON_WORD, _RUN_UNION, _EXIT_MASK
        while not owner.stopping:
            try:
                ioctl(fd, kvm_run)  # the argument is 0 (see kvm_run_ioctl)
            except InterruptedError:
                # A kick from stop(), or immediate_exit: the loop condition decides.
                counts[uapi.KVM_EXIT_INTR] += 1
                continue
            except BlockingIOError:
                # EAGAIN: an AP left wait-for-SIPI (KVM_MP_STATE_UNINITIALIZED); run it again,
                # as the kernel asks (arch/x86/kvm/x86.c, kvm_arch_vcpu_ioctl_run).
                continue
            except OSError as exc:
                raise self._run_failed(exc.errno or 0) from None
            reason = words[reason_word]
            counts[reason & mask] += 1
            if ring.zones and ring.pending():
                # Posted writes first: a later access must not overtake them (any vCPU's).
                drain(self)
            if reason == exit_io:
                direction, size, addr, count, offset = unpack_io(mm, union)
                if not direction or count != 1:
                    self._io(direction, size, addr, count, offset)
                    continue
                data = mm[offset : offset + size]
                events, ranges = pio_events, pio_ranges
            elif reason == exit_mmio:
                addr, data, size, is_write = unpack_mmio(mm, union)
                if not is_write or size > 8:
                    self._mmio(addr, data, size, is_write)
                    continue
                data = data[:size]
                events, ranges = mmio_events, mmio_ranges
            elif self._other_exit(reason):
                return
            else:
                continue
            slot.count += 1
            event = events.get((addr << 4) | size)
            if event is not None and event.live:
                signal = event.signal
                if signal is not None:
                    signal(event, data)
                slot.count += 1
            else:
                claimed = ranges(addr, data)
                slot.count += 1
                if not claimed and strict:
                    self._unhandled("pio" if reason == exit_io else "mmio", addr, size,
                                    write=True)

    def _exits_compiled(self, fast: ModuleType) -> None:
        """The same loop with its hot half in C (``_fastloop.ExitLoop.run``): it returns only
        for what it leaves to Python, the exit counted and the ring drained as above."""
        owner = self.owner
        pio, mmio = self._buses
        pio_events, pio_write, mmio_events, mmio_write = self._paths
        loop = fast.ExitLoop(
            self.vcpu.fd, self.vcpu.run_mmap, owner, self, self.counts, self.slot, self.ring,
            owner.drain_posted, pio_events, pio_write, pio.read, mmio_events, mmio_write,
            mmio.read, self._strict, _stock_bus(pio_write), _stock_bus(mmio_write))
        run = loop.run
        stopping, unhandled = fast.STOPPING, fast.UNHANDLED
        try:
            while True:
                code = run()
                if code >= 0:
                    if self._exit(code):
                        return
                elif code == stopping:
                    return
                elif code == -errno.EINTR:
                    self.counts[uapi.KVM_EXIT_INTR] += 1
                elif code == -errno.EAGAIN:
                    continue  # an AP left wait-for-SIPI: run it again (as above)
                elif code == unhandled:
                    self._unhandled_exit()
                else:
                    raise self._run_failed(-code)
        finally:
            self.native_exits += loop.handled

    def _exit(self, reason: int) -> bool:
        """One exit, counted and drained already. True when this vCPU is finished."""
        mm = self.vcpu.run_mmap
        if reason == uapi.KVM_EXIT_IO:
            self._io(*_IO.unpack_from(mm, _RUN_UNION))
            return False
        if reason == uapi.KVM_EXIT_MMIO:
            self._mmio(*_MMIO.unpack_from(mm, _RUN_UNION))
            return False
        return self._other_exit(reason)

    def _io(self, direction: int, size: int, port: int, count: int, offset: int) -> None:
        """A port access; ``rep outs``/``rep ins`` hand over ``count`` elements, served one
        by one."""
        mm = self.vcpu.run_mmap
        for i in range(count):
            at = offset + i * size
            if direction:
                self._write("pio", port, mm[at : at + size])
            else:
                mm[at : at + size] = self._read("pio", port, size)

    def _mmio(self, addr: int, data: bytes, size: int, is_write: int) -> None:
        if size > 8:
            raise GuestError(f"MMIO exit with length {size}", vcpu=self.index,
                             regs=self.registers())
        if is_write:
            self._write("mmio", addr, data[:size])
        else:
            self.vcpu.run_mmap[_MMIO_DATA : _MMIO_DATA + size] = self._read("mmio", addr, size)

    def _write(self, space: str, addr: int, data: bytes) -> None:
        """A guest write: its exact-match event, else the range device under it, else the
        unhandled policy. The grace slot is odd for the whole dispatch."""
        pio_events, pio_ranges, mmio_events, mmio_ranges = self._paths
        events, ranges = (pio_events, pio_ranges) if space == "pio" else (mmio_events,
                                                                          mmio_ranges)
        slot = self.slot
        slot.count += 1
        event = events.get((addr << 4) | len(data))
        if event is not None and event.live:
            signal = event.signal
            if signal is not None:
                signal(event, data)
            slot.count += 1
        else:
            claimed = ranges(addr, data)
            slot.count += 1
            if not claimed and self._strict:
                self._unhandled(space, addr, len(data), write=True)

    def _read(self, space: str, addr: int, size: int) -> bytes:
        """A guest read: the range device's bytes, else the unhandled policy's."""
        bus = self._buses[0 if space == "pio" else 1]
        slot = self.slot
        slot.count += 1
        value = bus.read(addr, size)
        slot.count += 1
        if value is None:
            value = self._unhandled(space, addr, size, write=False)
        return value

    def _unhandled_exit(self) -> None:
        """The compiled loop found nobody for the access the kvm_run page describes (strict)."""
        mm = self.vcpu.run_mmap
        if self._words[_RUN_EXIT_REASON_WORD] == uapi.KVM_EXIT_IO:
            direction, size, addr, _, offset = _IO.unpack_from(mm, _RUN_UNION)
            space, is_write = "pio", bool(direction)
        else:
            addr, _, size, is_write_flag = _MMIO.unpack_from(mm, _RUN_UNION)
            space, is_write, offset = "mmio", bool(is_write_flag), _MMIO_DATA
        value = self._unhandled(space, addr, size, write=is_write)
        if not is_write:
            mm[offset : offset + size] = value

    def _run_failed(self, code: int) -> GuestError:
        return GuestError(f"KVM_RUN failed: {os.strerror(code)} (errno {code})",
                          vcpu=self.index, regs=self.registers())

    def _unhandled(self, space: str, addr: int, size: int, *, write: bool) -> bytes:
        """Nobody claimed the access: all-ones / dropped, or a stop when the machine is strict
        (as it was when this run started)."""
        if self._strict:
            kind = "write to" if write else "read from"
            where = f"port {addr:#x}" if space == "pio" else f"MMIO address {addr:#x}"
            raise GuestIOError(f"unhandled {size}-byte {kind} {where} (strict mode)",
                               vcpu=self.index, space=space, addr=addr, length=size,
                               regs=self.registers())
        return b"\xff" * size

    def _other_exit(self, reason: int) -> bool:
        """Every exit but IO and MMIO. True when this vCPU is finished."""
        mm = self.vcpu.run_mmap
        if reason == uapi.KVM_EXIT_HLT:
            self.halted = True
            return True
        if reason == uapi.KVM_EXIT_INTR:
            return False
        if reason == uapi.KVM_EXIT_SHUTDOWN:
            raise GuestError("triple fault: the guest shut down (KVM_EXIT_SHUTDOWN)",
                             vcpu=self.index, regs=self.registers())
        if reason == uapi.KVM_EXIT_FAIL_ENTRY:
            hw, cpu = _FAIL_ENTRY.unpack_from(mm, _RUN_UNION)
            raise GuestError(f"VM entry failed (KVM_EXIT_FAIL_ENTRY): hardware reason {hw:#x} "
                             f"on host CPU {cpu}", vcpu=self.index, regs=self.registers())
        if reason == uapi.KVM_EXIT_INTERNAL_ERROR:
            # Imported here: most runs never stop this way (start-up, README).
            from .emulate import emulate
            from .kvm import internal_error

            suberror, ndata, *data = _INTERNAL.unpack_from(mm, _RUN_UNION)
            if suberror == uapi.KVM_INTERNAL_ERROR_EMULATION:
                insn = internal_error.instruction_bytes(data[:ndata])
                memory = self.owner.memory
                if insn and memory is not None and emulate(self.vcpu, memory, insn):
                    self.emulated += 1   # an instruction KVM's emulator lacks (emulate.py)
                    return False
            regs = self.registers()
            raise GuestError(internal_error.describe(suberror, data[: min(ndata, 16)], regs),
                             vcpu=self.index, regs=regs)
        if reason == uapi.KVM_EXIT_SYSTEM_EVENT:
            kind, _ = _SYSTEM_EVENT.unpack_from(mm, _RUN_UNION)
            if kind == uapi.KVM_SYSTEM_EVENT_SHUTDOWN:
                self.owner.request_stop("shutdown")
                return True
            if kind == uapi.KVM_SYSTEM_EVENT_RESET:
                self.owner.request_stop("reset")
                return True
            raise GuestError(f"system event {kind} (KVM_EXIT_SYSTEM_EVENT)", vcpu=self.index,
                             regs=self.registers())
        name = uapi.EXIT_REASON_NAMES.get(reason, "unknown")
        raise GuestError(f"unhandled exit KVM_EXIT_{name} ({reason})", vcpu=self.index,
                         regs=self.registers())

    def registers(self) -> dict[str, int]:
        """General and system registers, for error reports. Empty if KVM refuses them."""
        try:
            regs = self.vcpu.get_regs()
            sregs = self.vcpu.get_sregs()
        except OSError:
            return {}
        out = {f[0]: getattr(regs, f[0]) for f in uapi.kvm_regs._fields_}
        out.update(cs=sregs.cs.selector, cs_base=sregs.cs.base, ss=sregs.ss.selector,
                   cr0=sregs.cr0, cr2=sregs.cr2, cr3=sregs.cr3, cr4=sregs.cr4, efer=sregs.efer)
        return out
