"""The exit loop of one vCPU thread: ``KVM_RUN``, dispatch the exit, resume.

Two implementations of one loop, chosen by :mod:`xinterface.accel`:

- the Python loop (:meth:`VcpuLoop._exits_python`), the reference: its hot path (a single
  PIO/MMIO write) binds everything it touches to locals and reads the ``kvm_run`` page
  through the raw layouts of :mod:`xinterface.kvm.exits`;
- the compiled loop (``xinterface._fastloop``, :meth:`VcpuLoop._exits_compiled`): the same
  steps in C for single PIO/MMIO reads and writes, returning to this module for every other
  exit, for ``EINTR``, and for an access nobody claimed (counted and decided here).

Neither decides who gets an access: the bus does (:mod:`xinterface.iobus`, whose ``write``
and ``read`` the Python loop calls through ``write_in``/``read_in``, and whose ``routes`` the
compiled loop serves). Every exit off the hot path is decoded once, by
:func:`xinterface.kvm.exits.decode`, into a typed exit handled by :meth:`VcpuLoop._exit`.

Both count exits in ``counts``, drain the coalesced ring before any exit is handled, and keep
the grace-period slot odd exactly while a handler (event, range device, read) runs.

``KVM_RUN`` must hand ``EINTR`` back to Python: that is how a stop reaches a vCPU thread (see
:meth:`xinterface.kvm.VcpuFd.run`, which raises ``InterruptedError`` for it and never retries,
and :mod:`xinterface.runner.machine`). The compiled loop calls libc's ``ioctl``
itself and returns every ``EINTR`` to :meth:`VcpuLoop._exits_compiled`.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
from types import ModuleType
from typing import Protocol

from .. import accel
from ..delivery.posted import CoalescedRing
from ..errors import GuestError, GuestIOError
from ..grace import ReaderSlot
from ..iobus import Bus, read_in, write_in
from ..kvm import VcpuFd, exits, uapi
from ..kvm.exits import Space
from ..memory import GuestMemory

# The signal that takes a thread out of KVM_RUN with EINTR (its handler: runner.machine);
# also a debugger's, whose step runs KVM_RUN on its own thread.
KICK_SIGNAL = signal.SIGRTMIN + 1
_EXIT_MASK = 0xFF  # exit reasons are small integers; counts is indexed by them


class DebugHook(Protocol):
    """A guest debugger's part in the exit loop (:mod:`xinterface.gdb`), called on the vCPU's
    thread: ``hold`` before a vCPU first enters ``KVM_RUN`` in a run, ``stop`` at a
    ``KVM_EXIT_DEBUG`` or an internal error (where an ``int3`` the debugger planted ends up
    on KVMs whose emulator fails it). True: the debugger takes the stop, the run is pausing
    and this vCPU leaves ``KVM_RUN`` to park."""

    def hold(self, loop: VcpuLoop) -> bool: ...
    def stop(self, loop: VcpuLoop, exit: exits.Debug | exits.InternalError) -> bool: ...


class LoopOwner(Protocol):
    """What a vCPU thread needs of whoever runs it: the whole contract, for this loop and any
    other implementation of it (a compiled loop keeps the same one).

    ``stopping`` is read before every ``KVM_RUN``; ``request_stop`` is the one way to end
    the run of every vCPU (a reason, the exit code of a debug exit, or the error that ended
    it); ``park`` is where a thread that left its loop for a pause waits (True: run again);
    ``vcpu_done`` is the thread's last call.

    A stop reaches a thread in ``KVM_RUN`` as ``EINTR``: the owner sets ``immediate_exit``
    and signals the thread, and ``KVM_RUN`` is entered through ``VcpuFd.run`` (or the
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
    def drain_posted(self, loop: VcpuLoop) -> None: ...
    def request_stop(self, reason: str, exit_code: int | None = None,
                     error: BaseException | None = None) -> None: ...
    def park(self, loop: VcpuLoop) -> bool: ...
    def vcpu_done(self, loop: VcpuLoop) -> None: ...
    @property
    def debugger(self) -> DebugHook | None: ...


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
        # Accesses no device claimed, by kind ("pio_write", "mmio_read", ...): what a guest
        # probed or got wrong, read by --metrics without a lock (plain int increments).
        self.unclaimed: dict[str, int] = {}
        self.thread_id: int | None = None
        self.native_exits = 0  # exits the compiled loop served without returning to Python
        self._buses: tuple[Bus, Bus] = owner.buses()
        self._strict = False
        self._words = memoryview(vcpu.run_mmap).cast("I")

    def release(self) -> None:
        """Drop the view of the kvm_run page so the vCPU's mmap can be closed."""
        self._words.release()

    def set_immediate_exit(self, value: int) -> None:
        self.vcpu.set_immediate_exit(bool(value))

    def run(self) -> None:
        """The thread body: the exit loop until this vCPU halts or the run ends, parked
        between loops while the run is paused. Errors end the run; ``run()`` re-raises them."""
        self.thread_id = self.slot.thread_id = threading.get_ident()
        try:
            self.halted = False
            hook = self.owner.debugger
            if hook is not None and hook.hold(self) and not self.owner.park(self):
                return
            # Not while halted: a debugger's step may have run it into HLT while parked.
            while not self.halted:
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
            access = exits.decode(self.vcpu.run_mmap)
            assert isinstance(access, exits.Access)  # a handler runs only for an access
            raise GuestIOError(
                f"the handler of a {access.size}-byte access to {access.space.where(access.addr)}"
                f" raised {type(exc).__name__}: {exc}", vcpu=self.index, space=access.space,
                addr=access.addr, length=access.size) from exc

    def _exits(self) -> None:
        self.halted = False
        # Read once a run: the buses (wrapped when tracing) and strictness.
        self._buses = self.owner.buses()
        self._strict = self.owner.strict
        fast = accel.fastloop
        if fast is not None:
            self._exits_compiled(fast)
        else:
            self._exits_python()

    def _exits_python(self) -> None:
        """The reference loop. Its hot path is a single write: the raw layouts of
        :mod:`.kvm.exits` read straight into locals, then the bus's rule (:func:`write_in`);
        every other exit is decoded by :func:`.kvm.exits.decode` and goes to :meth:`_exit`."""
        owner = self.owner
        mm = self.vcpu.run_mmap
        words = self._words
        counts = self.counts
        run = self.vcpu.run  # InterruptedError for EINTR, never retried (VcpuFd.run)
        exit_io, exit_mmio = uapi.KVM_EXIT_IO, uapi.KVM_EXIT_MMIO
        unpack_io = exits.IO.unpack_from
        unpack_mmio = exits.MMIO.unpack_from
        pio, mmio = self._buses
        slot = self.slot
        ring = self.ring
        drain = owner.drain_posted
        decode = exits.decode
        reason_word, union, mask = exits.REASON_WORD, exits.UNION, _EXIT_MASK
        while not owner.stopping:
            try:
                run()
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
                    self._exit(decode(mm))
                    continue
                data = mm[offset : offset + size]
                bus = pio
            elif reason == exit_mmio:
                addr, data, size, is_write = unpack_mmio(mm, union)
                if not is_write or size > 8:
                    self._exit(decode(mm))
                    continue
                data = data[:size]
                bus = mmio
            elif self._exit(decode(mm)):
                return
            else:
                continue
            if not write_in(slot, bus, addr, data):
                self._unhandled(bus.space, addr, size, write=True)

    def _exits_compiled(self, fast: ModuleType) -> None:
        """The same loop with its hot half in C (``_fastloop.ExitLoop.run``): it returns only
        for what it leaves to Python, the exit counted and the ring drained as above."""
        pio, mmio = self._buses
        loop = fast.ExitLoop(
            self.vcpu.fd, self.vcpu.run_mmap, self.owner, self, self.counts, self.slot,
            self.ring, self.owner.drain_posted, pio, mmio)
        run = loop.run
        stopping, unhandled = fast.STOPPING, fast.UNHANDLED
        try:
            while True:
                code = run()
                if code >= 0:
                    if self._exit(exits.decode(self.vcpu.run_mmap)):
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

    def _exit(self, exit: exits.VcpuExit) -> bool:
        """One exit, counted and drained already. True when this vCPU is finished."""
        if isinstance(exit, exits.Access):
            self._access(exit)
            return False
        return self._other_exit(exit)

    def _access(self, access: exits.Access) -> None:
        """A guest access, element by element: ``rep outs``/``rep ins`` hand over ``count``
        of them, every other access one."""
        if access.space is Space.MMIO and access.size > 8:
            raise GuestError(f"MMIO exit with length {access.size}", vcpu=self.index,
                             regs=self.registers())
        mm = self.vcpu.run_mmap
        space, addr, size = access.space, access.addr, access.size
        for i in range(access.count):
            at = access.data_offset + i * size
            if access.is_write:
                self._write(space, addr, mm[at : at + size])
            else:
                mm[at : at + size] = self._read(space, addr, size)

    def _bus(self, space: Space) -> Bus:
        return self._buses[0 if space is Space.PIO else 1]

    def _write(self, space: Space, addr: int, data: bytes) -> None:
        """A guest write: the bus's rule, else the unhandled policy."""
        if not write_in(self.slot, self._bus(space), addr, data):
            self._unhandled(space, addr, len(data), write=True)

    def _read(self, space: Space, addr: int, size: int) -> bytes:
        """A guest read: the range device's bytes, else the unhandled policy's."""
        value = read_in(self.slot, self._bus(space), addr, size)
        if value is None:
            value = self._unhandled(space, addr, size, write=False)
        return value

    def _unhandled_exit(self) -> None:
        """The compiled loop found nobody for the access the kvm_run page describes."""
        access = exits.decode(self.vcpu.run_mmap)
        assert isinstance(access, exits.Access)  # UNHANDLED comes only for an access
        value = self._unhandled(access.space, access.addr, access.size, write=access.is_write)
        if not access.is_write:
            at = access.data_offset
            self.vcpu.run_mmap[at : at + access.size] = value

    def _run_failed(self, code: int) -> GuestError:
        return GuestError(f"KVM_RUN failed: {os.strerror(code)} (errno {code})",
                          vcpu=self.index, regs=self.registers())

    def _unhandled(self, space: Space, addr: int, size: int, *, write: bool) -> bytes:
        """Nobody claimed the access: all-ones / dropped, or a stop when the machine is strict
        (as it was when this run started)."""
        import logging  # here, not at the top: `xinterface run` starts without it (README)

        log = logging.getLogger(__name__)
        kind = "write to" if write else "read from"
        counter = f"{space.value}_{'write' if write else 'read'}"
        self.unclaimed[counter] = self.unclaimed.get(counter, 0) + 1
        if self._strict:
            log.error("vcpu%d: unhandled %d-byte %s %s (strict mode)", self.index, size, kind,
                      space.where(addr))
            raise GuestIOError(f"unhandled {size}-byte {kind} {space.where(addr)} (strict mode)",
                               vcpu=self.index, space=space, addr=addr, length=size,
                               regs=self.registers())
        log.debug("vcpu%d: unclaimed %d-byte %s %s", self.index, size, kind, space.where(addr))
        return b"\xff" * size

    def _other_exit(self, exit: exits.VcpuExit) -> bool:
        """Every exit but a guest access. True when this vCPU is finished."""
        if isinstance(exit, exits.Halt):
            self.halted = True
            return True
        if isinstance(exit, exits.Interrupted):
            return False
        if isinstance(exit, exits.Shutdown):
            raise GuestError("triple fault: the guest shut down (KVM_EXIT_SHUTDOWN)",
                             vcpu=self.index, regs=self.registers())
        if isinstance(exit, exits.FailEntry):
            raise GuestError(f"VM entry failed (KVM_EXIT_FAIL_ENTRY): hardware reason "
                             f"{exit.hardware_reason:#x} on host CPU {exit.cpu}",
                             vcpu=self.index, regs=self.registers())
        if isinstance(exit, exits.Debug | exits.InternalError):
            hook = self.owner.debugger
            if hook is not None and hook.stop(self, exit):
                return True  # the debugger's stop: park (run() asks the owner)
            if isinstance(exit, exits.Debug):
                if hook is None:
                    raise GuestError(f"debug exit (#{exit.exception}) at {exit.pc:#x} with "
                                     "no debugger", vcpu=self.index, regs=self.registers())
                # Not the debugger's: the guest's own #DB or #BP, which guest debugging
                # diverts to userspace (api.rst, KVM_SET_GUEST_DEBUG), goes to the guest.
                from ..kvm import debug

                dr6 = exit.dr6 & (debug.DR6_HITS | debug.DR6_BS)
                debug.inject_exception(self.vcpu, exit.exception,
                                       dr6 if exit.exception == debug.DB_VECTOR else None)
                return False
        if isinstance(exit, exits.InternalError):
            # Imported here: most runs never stop this way (start-up: docs/performance.md).
            from ..kvm import internal_error
            from .emulate import emulate

            if exit.suberror == uapi.KVM_INTERNAL_ERROR_EMULATION:
                insn = internal_error.instruction_bytes(exit.data)
                memory = self.owner.memory
                if insn and memory is not None and emulate(self.vcpu, memory, insn):
                    self.emulated += 1   # an instruction KVM's emulator lacks (emulate.py)
                    return False
            regs = self.registers()
            raise GuestError(internal_error.describe(exit.suberror, exit.data, regs),
                             vcpu=self.index, regs=regs)
        if isinstance(exit, exits.SystemEvent):
            if exit.kind == uapi.KVM_SYSTEM_EVENT_SHUTDOWN:
                self.owner.request_stop("shutdown")
                return True
            if exit.kind == uapi.KVM_SYSTEM_EVENT_RESET:
                self.owner.request_stop("reset")
                return True
            raise GuestError(f"system event {exit.kind} (KVM_EXIT_SYSTEM_EVENT)",
                             vcpu=self.index, regs=self.registers())
        reason = exit.reason if isinstance(exit, exits.Other) else uapi.KVM_EXIT_UNKNOWN
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
