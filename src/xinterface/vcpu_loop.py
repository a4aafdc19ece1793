"""The exit loop of one vCPU thread: ``KVM_RUN``, dispatch the exit, resume.

The hot path is the PIO/MMIO branch of :meth:`VcpuLoop.run`. Everything it touches is bound
to locals before the loop, ``struct`` objects are precompiled, and the exit reason is read
through a ``memoryview`` cast of the shared ``kvm_run`` page, so one exit costs a few dozen
bytecodes on top of the ioctl.

``KVM_RUN`` is called through :func:`kvm_run_ioctl`, which must hand ``EINTR`` back to Python:
that is how a stop reaches a vCPU thread (see there and :mod:`xinterface.machine`).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
import sys
import threading
from collections.abc import Callable
from typing import Any, Protocol

from .delivery.posted import CoalescedRing
from .emulate import emulate
from .errors import GuestError, GuestIOError
from .grace import ReaderSlot
from .iobus import Bus
from .kvm import VcpuFd, internal_error, uapi
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

# (fd, request, arg) -> 0, or raises OSError (InterruptedError for EINTR).
RunIoctl = Callable[[int, int, int], object]
_libc_ioctl: RunIoctl | None = None


def kvm_run_ioctl() -> RunIoctl:
    """The call the exit loop enters ``KVM_RUN`` with: one that never retries ``EINTR``."""
    global _libc_ioctl
    if not FCNTL_IOCTL_RETRIES_EINTR:
        return fcntl.ioctl  # the cheaper call, where it returns EINTR (CPython < 3.14)
    if _libc_ioctl is None:
        call = ctypes.CDLL(None, use_errno=True).ioctl
        call.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong)
        call.restype = ctypes.c_int
        call.errcheck = _raise_errno
        _libc_ioctl = call
    return _libc_ioctl


def _raise_errno(result: Any, func: Any, args: Any) -> Any:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))  # OSError(EINTR, ...) is an InterruptedError
    return result


class LoopOwner(Protocol):
    """What a vCPU thread needs of whoever runs it: the whole contract, for this loop and any
    other implementation of it (a compiled loop keeps the same one).

    ``stopping`` is read before every ``KVM_RUN``; ``request_stop``/``fail`` end the run of
    every vCPU; ``vcpu_done`` is the thread's last call.

    A stop reaches a thread in ``KVM_RUN`` as ``EINTR``: the owner sets ``immediate_exit``
    and signals the thread, and ``KVM_RUN`` is entered through :func:`kvm_run_ioctl`, which
    never retries ``EINTR``. The owner sets ``stopping`` back to false only when it starts
    a run, before any loop thread of that run exists, so a stop is never lost.
    """

    stopping: bool

    @property
    def strict(self) -> bool: ...
    @property
    def memory(self) -> GuestMemory | None: ...
    def buses(self) -> tuple[Bus, Bus]: ...
    def write_paths(self) -> tuple[dict[int, Any], Callable[[int, bytes], bool],
                                   dict[int, Any], Callable[[int, bytes], bool]]: ...
    def drain_posted(self, loop: VcpuLoop) -> None: ...
    def request_stop(self, reason: str, exit_code: int | None = None) -> None: ...
    def fail(self, exc: BaseException) -> None: ...
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
        self._words = memoryview(vcpu.run_mmap).cast("I")

    def release(self) -> None:
        """Drop the view of the kvm_run page so the vCPU's mmap can be closed."""
        self._words.release()

    def set_immediate_exit(self, value: int) -> None:
        self.vcpu.run_mmap[uapi.kvm_run.immediate_exit.offset] = value

    def run(self) -> None:
        """The thread body. Errors go to the machine, which stops every vCPU and re-raises."""
        self.thread_id = self.slot.thread_id = threading.get_ident()
        try:
            self._loop()
        except BaseException as exc:  # handed to Machine.run(), which re-raises it
            self.owner.fail(exc)
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
        pio, mmio = owner.buses()
        pio_read, mmio_read = pio.read, mmio.read
        # Writes: the exact-match event is looked up here, saving a call per exit; the rest
        # is IoBus.write_ranges. Same semantics as IoBus.write (see there).
        pio_events, pio_ranges, mmio_events, mmio_ranges = owner.write_paths()
        strict = owner.strict
        slot = self.slot
        ring = self.ring
        drain = owner.drain_posted
        reason_word, union, mmio_data, mask = (_RUN_EXIT_REASON_WORD, _RUN_UNION, _MMIO_DATA,
                                               _EXIT_MASK)
        self.halted = False
        while not owner.stopping:
            try:
                ioctl(fd, kvm_run, 0)
            except InterruptedError:
                # A kick from stop(), or immediate_exit: the loop condition decides.
                counts[uapi.KVM_EXIT_INTR] += 1
                continue
            except BlockingIOError:
                # EAGAIN: an AP left wait-for-SIPI (KVM_MP_STATE_UNINITIALIZED); run it again,
                # as the kernel asks (arch/x86/kvm/x86.c, kvm_arch_vcpu_ioctl_run).
                continue
            except OSError as exc:
                raise GuestError(f"KVM_RUN failed: {exc.strerror} (errno {exc.errno})",
                                 vcpu=self.index, regs=self.registers()) from None
            reason = words[reason_word]
            counts[reason & mask] += 1
            if ring.zones and ring.pending():
                # Posted writes first: a later access must not overtake them (any vCPU's).
                drain(self)
            # Decode the access; reads and writes are then served by one tail each, below.
            if reason == exit_io:
                direction, size, addr, count, offset = unpack_io(mm, union)
                if count != 1:
                    self._string_io(direction, size, addr, count, offset)
                    continue
                space, is_write = "pio", direction
                if is_write:
                    data = mm[offset : offset + size]
                    events, ranges = pio_events, pio_ranges
                else:
                    read = pio_read
            elif reason == exit_mmio:
                addr, data, size, is_write = unpack_mmio(mm, union)
                if size > 8:
                    raise GuestError(f"MMIO exit with length {size}", vcpu=self.index,
                                     regs=self.registers())
                space = "mmio"
                if is_write:
                    data = data[:size]
                    events, ranges = mmio_events, mmio_ranges
                else:
                    read, offset = mmio_read, mmio_data
            elif self._other_exit(reason):
                return
            else:
                continue
            if not is_write:
                slot.count += 1
                value = read(addr, size)
                slot.count += 1
                if value is None:
                    value = self._unhandled(space, addr, size, write=False)
                mm[offset : offset + size] = value
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
                    self._unhandled(space, addr, size, write=True)

    def _string_io(self, direction: int, size: int, port: int, count: int, offset: int) -> None:
        """``rep outs``/``rep ins``: KVM hands over ``count`` elements, served one by one."""
        mm = self.vcpu.run_mmap
        bus = self.owner.buses()[0]
        slot = self.slot
        for i in range(count):
            at = offset + i * size
            slot.count += 1
            if direction:
                claimed = bus.write(port, mm[at : at + size])
                slot.count += 1
                if not claimed and self.owner.strict:
                    self._unhandled("pio", port, size, write=True)
            else:
                value = bus.read(port, size)
                slot.count += 1
                if value is None:
                    value = self._unhandled("pio", port, size, write=False)
                mm[at : at + size] = value

    def _unhandled(self, space: str, addr: int, size: int, *, write: bool) -> bytes:
        """Nobody claimed the access: all-ones / dropped, or a stop when the machine is strict."""
        if self.owner.strict:
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
