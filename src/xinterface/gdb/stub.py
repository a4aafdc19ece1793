"""The commands of GDB's remote protocol on a paused machine, and the vCPUs' debug stops.

All-stop (GDB manual, "Remote Protocol"): while GDB looks, the run is paused (every vCPU
parked outside ``KVM_RUN``, :meth:`Machine.pause`). A vCPU that stops at a breakpoint begins
the pause itself (``request_pause``) and parks; the stub completes it and reports the stop.
A step runs one vCPU for one instruction on the stub's thread while the others stay parked,
so ``s`` moves nothing else; stepping off a breakpoint (its ``int3`` taken out, its debug
register off) is such a step before a ``c``.

Breakpoints: ``Z0`` plants ``int3`` (the original byte kept and shown by ``m``); where KVM's
emulator fails an intercepted ``int3`` (``KVM_EXIT_INTERNAL_ERROR`` at it, kvm_pvm) or reports
it (``KVM_EXIT_DEBUG`` #BP), both are recognised by the address. ``Z1`` uses DR0-DR3. Data
watchpoints (``Z2``-``Z4``) are refused: the measured host does not fire them, so GDB says
so, and ``set can-use-hw-watchpoints 0`` gives GDB's own single-stepping watchpoints.
With no breakpoint set, guest debugging is off and the guest runs at full speed.

An exception that is not the stub's (the guest's own ``int3``, its own TF or debug registers)
is declined by :meth:`Stub.stop` and goes to the guest (:mod:`xinterface.runner.vcpu_loop`,
:mod:`xinterface.runner.emulate`). Two vCPUs that stop in one pause are both kept: one is
reported, the others are reported at the following resumes without running (as gdbserver
does), while each still sits at its breakpoint.

Steps hold interrupts off (``KVM_GUESTDBG_BLOCKIRQ``). A step over ``HLT`` is not
single-stepped (see :meth:`Stub._at_hlt`): the vCPU runs to the next instruction (a
debug register there), which it reaches once an interrupt woke it (in-kernel irqchip), or
it halts for good (``KVM_EXIT_HLT``, no irqchip). Such a step may wait for ever, so it runs
with a watcher on the connection that ends it at Ctrl-C (``T02``) or when GDB leaves.
A software breakpoint set in real mode also takes a free debug register (KVM's emulator
runs a real-mode ``int3`` through the guest's IVT); an ``int3`` the guest wrote over is
planted again, with the guest's new byte as the original.
"""

from __future__ import annotations

import contextlib
import errno
import signal
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from ..errors import XInterfaceError
from ..kvm import VcpuFd, debug, exits
from ..memory import GuestMemory
from ..runner.vcpu_loop import KICK_SIGNAL, VcpuLoop
from ..runstate import IN_RUN, RunState
from . import target

SIGINT, SIGTRAP = 2, 5
_DR7_ENABLE = 0x1  # L0; slot i is bit 2*i (Intel SDM vol. 3, 18.2.4, execute, length 1)
_HLT, _INT3 = 0xF4, 0xCC

# Runs a step that may block in KVM_RUN: calls its argument (which ends the step) at Ctrl-C
# or when the client leaves.
Watch = Callable[[Callable[[], None]], contextlib.AbstractContextManager[None]]


class Stop:
    """A vCPU's stop at a breakpoint: its index, ``kind`` (``swbreak``/``hwbreak``, ``""``
    for a hold at the start) and the linear PC it stopped at."""

    __slots__ = ("kind", "pc", "thread")

    def __init__(self, thread: int, kind: str, pc: int = 0) -> None:
        self.thread, self.kind, self.pc = thread, kind, pc


class Debuggee(Protocol):
    """What the stub needs of a :class:`~xinterface.runner.machine.Machine`."""

    vcpus: list[VcpuLoop]

    @property
    def memory(self) -> GuestMemory | None: ...
    @property
    def state(self) -> RunState: ...
    @property
    def exit_code(self) -> int | None: ...
    def pause(self) -> bool: ...
    def resume(self) -> bool: ...
    def request_pause(self) -> bool: ...
    def stop(self) -> None: ...
    def wait_for(self, state: RunState, timeout: float | None = None) -> bool: ...


class Stub:
    """One machine's debugging state (breakpoints, the last stop, held vCPUs) and the
    packet handlers. ``monitor`` answers ``monitor`` commands (text in, text out)."""

    def __init__(self, machine: Debuggee, *, wait: bool,
                 monitor: Callable[[str], str] | None = None,
                 arch: target.Arch | None = None) -> None:
        self.machine = machine
        self.fixed_arch = arch  # None: by vCPU 0's mode when GDB asks
        self.lock = threading.Condition(threading.Lock())
        self.hold_start = wait         # vCPUs wait at their first instruction for GDB
        self.software: dict[int, int] = {}   # linear address -> original byte
        self.planted: dict[int, int] = {}    # linear address -> where its int3 is (gpa)
        self.hardware: list[int] = []        # linear addresses in DR0..DR3
        self.backed: set[int] = set()        # software ones also in a free debug register
        self.stops: list[Stop] = []          # taken by vCPU threads, not yet seen
        self.pending: list[Stop] = []        # seen in a pause with a reported one
        self.current = 0                     # Hg's vCPU
        self.last_stop = (0, "")
        self.monitor = monitor
        self.attached = False
        self.stepping_from: int | None = None  # a breakpoint's address while stepped off
        self.block_irq = True                # until KVM refuses KVM_GUESTDBG_BLOCKIRQ
        vm = getattr(machine, "vm", None)
        self.irqchip = bool(getattr(vm, "irqchip", False))

    # --- the vCPU threads' side (vcpu_loop.DebugHook) --------------------------------------
    def hold(self, loop: VcpuLoop) -> bool:
        with self.lock:
            if not self.hold_start:
                return False
            self.stops.append(Stop(loop.index, ""))
            self.lock.notify_all()
        return self.machine.request_pause()

    def stop(self, loop: VcpuLoop, exit: exits.Debug | exits.InternalError) -> bool:
        try:
            pc = self._linear_pc(loop)
        except OSError:
            return False
        with self.lock:
            kind = self._kind(pc, exit)
            if not kind:
                return False  # not the stub's: the guest's own, delivered to it
            self.stops.append(Stop(loop.index, kind, pc))
            self.lock.notify_all()
        # Ours even when the run is ending instead (no pause to begin): this vCPU leaves
        # KVM_RUN either way, and its breakpoint is never handed to the guest.
        self.machine.request_pause()
        return True

    def _kind(self, pc: int, exit: exits.Debug | exits.InternalError) -> str:
        """``swbreak``/``hwbreak`` for a stop at a breakpoint of the stub's, else ``""``."""
        if pc == self.stepping_from:
            return ""  # the guest's own int3 under a breakpoint of ours, run by a step
        if isinstance(exit, exits.InternalError) or exit.exception == debug.BP_VECTOR:
            # An int3 the emulator failed (RIP at it) or KVM reported: ours if we planted it.
            return "swbreak" if pc in self.software else ""
        # A #DB: ours only for a debug-register hit at one of our addresses; a single step
        # (DR6.BS) outside a step of ours is the guest's own TF.
        if not exit.dr6 & debug.DR6_HITS:
            return ""
        return "hwbreak" if pc in self.hardware else "swbreak" if pc in self.backed else ""

    def close(self) -> None:
        with self.lock:
            self.hold_start = False
            self.stops.append(Stop(-1, "closed"))
            self.lock.notify_all()

    # --- the guest's state ---------------------------------------------------------------
    def _loop(self, thread: int | None = None) -> VcpuLoop:
        index = self.current if thread is None else thread
        return self.machine.vcpus[index]

    def _linear_pc(self, loop: VcpuLoop) -> int:
        regs = loop.vcpu.get_regs()
        sregs = loop.vcpu.get_sregs()
        # In 64-bit mode CS's base is ignored (SDM vol. 3, 3.4.4); else it makes EIP linear.
        base = 0 if target.arch_of(sregs) is target.X86_64 else int(sregs.cs.base)
        return (base + int(regs.rip)) & ((1 << 64) - 1)

    def arch(self) -> target.Arch:
        if self.fixed_arch is not None:
            return self.fixed_arch
        return target.arch_of(self._loop(0).vcpu.get_sregs())

    def _memory(self) -> GuestMemory:
        memory = self.machine.memory
        if memory is None:
            raise XInterfaceError(errno.EBADF, "the machine is closed", argument="machine",
                                  value=self.machine)
        return memory

    def _physical(self, linear: int) -> int:
        gpa, _ = debug.translate(self._loop().vcpu, linear)
        return gpa

    def read_memory(self, addr: int, length: int) -> bytes:
        """Guest-virtual bytes by the current vCPU's page tables, page by page, with the
        original bytes where an ``int3`` is planted."""
        out = bytearray()
        memory = self._memory()
        while length > 0:
            chunk = min(length, 0x1000 - (addr & 0xFFF))
            out += memory.read(self._physical(addr), chunk)
            addr, length = addr + chunk, length - chunk
        start = addr - len(out)
        for bp, byte in self.software.items():
            if start <= bp < start + len(out) and out[bp - start] == 0xCC:
                out[bp - start] = byte
        return bytes(out)

    def write_memory(self, addr: int, new: bytes) -> None:
        memory = self._memory()
        data = bytearray(new)
        for bp in self.software:  # the new byte is the original now; the int3 stays
            if addr <= bp < addr + len(data):
                self.software[bp] = data[bp - addr]
                data[bp - addr] = 0xCC
        self._write_physical(addr, data, memory)

    def _write_physical(self, addr: int, data: bytearray, memory: GuestMemory) -> None:
        at = 0
        while at < len(data):
            chunk = min(len(data) - at, 0x1000 - ((addr + at) & 0xFFF))
            memory.write(self._physical(addr + at), bytes(data[at : at + chunk]))
            at += chunk

    # --- breakpoints -----------------------------------------------------------------------
    def _replant(self) -> None:
        """A guest that wrote over a planted int3 (firmware loading code there) has its new
        byte kept as the original and the int3 planted again: the breakpoint stays."""
        memory = self._memory()
        for addr, gpa in self.planted.items():
            byte = memory.read(gpa, 1)[0]
            if byte != 0xCC:
                self.software[addr] = byte
                memory.write(gpa, b"\xcc")

    def insert(self, kind: int, addr: int) -> str:
        if kind == 0:
            if addr not in self.software:
                original = self.read_memory(addr, 1)[0]
                gpa = self._physical(addr)
                self._memory().write(gpa, b"\xcc")
                self.software[addr] = original
                self.planted[addr] = gpa  # taken out there, whatever maps it by then
                # In real mode KVM's emulator runs an int3 itself, through the guest's IVT
                # (no exit): a free debug register catches the breakpoint there.
                if not self._loop().vcpu.get_sregs().cr0 & target.CR0_PE:
                    self.backed.add(addr)
            return "OK"
        if kind == 1:
            if addr not in self.hardware:
                if len(self.hardware) == 4:
                    return "E28"  # ENOSPC: four debug address registers
                self.hardware.append(addr)
            return "OK"
        return ""  # Z2-Z4: not supported (see the module's docstring)

    def remove(self, kind: int, addr: int) -> str:
        if kind == 0 and addr in self.software:
            original = self.software.pop(addr)
            gpa = self.planted.pop(addr)
            self.backed.discard(addr)
            memory = self._memory()
            if memory.read(gpa, 1)[0] == 0xCC:  # else the guest wrote there since: its byte
                memory.write(gpa, bytes((original,)))
        elif kind == 1 and addr in self.hardware:
            self.hardware.remove(addr)
        elif kind > 1:
            return ""
        return "OK"

    def remove_all(self) -> None:
        for addr in list(self.software):
            self.remove(0, addr)
        self.hardware.clear()

    def _control(self, step: bool = False, skip: int | None = None,
                 first: int | None = None) -> tuple[int, tuple[int, ...]]:
        """Guest debugging for the breakpoints set, without the hardware one at ``skip``,
        with one at ``first`` in DR0 (the others after it, four in all)."""
        control = 0
        dr: list[int] = [0] * 8
        if self.software:
            control |= debug.GUESTDBG_ENABLE | debug.GUESTDBG_USE_SW_BP
        hardware = [a for a in [*self.hardware, *sorted(self.backed)] if a not in (skip, first)]
        if first is not None:
            hardware = [first, *hardware]
        hardware = hardware[:4]
        if hardware:
            control |= debug.GUESTDBG_ENABLE | debug.GUESTDBG_USE_HW_BP
            for i, addr in enumerate(hardware):
                dr[i] = addr
                dr[7] |= _DR7_ENABLE << (2 * i)
        if step:
            control |= debug.GUESTDBG_ENABLE | debug.GUESTDBG_SINGLESTEP
        return control, tuple(dr)

    def _arm(self, loops: Sequence[VcpuLoop]) -> None:
        control, dr = self._control()
        for loop in loops:
            debug.set_guest_debug(loop.vcpu, control, dr)

    # --- running ---------------------------------------------------------------------------
    def step(self, thread: int, watch: Watch | None = None) -> str:
        """One instruction of vCPU ``thread`` on this thread (the others stay parked); the
        stop reply. A breakpoint under it is taken out for that instruction. A stop of that
        vCPU still pending is reported instead. ``watch`` guards a step that may wait in
        ``KVM_RUN`` (over ``HLT``) so that Ctrl-C or the client's leaving ends it."""
        pending = self._take_pending(thread)
        if pending is not None:
            return self._report(pending)
        signo, kind = self._step(thread, watch)
        self.last_stop = (thread, kind)
        return self.stop_reply(thread, signo, kind)

    def _step(self, thread: int, watch: Watch | None) -> tuple[int, str]:
        """:meth:`step`'s instruction: the signal and stop kind it ends with."""
        loop = self._loop(thread)
        vcpu = loop.vcpu
        if loop.halted:  # halted for good (no irqchip): nothing more to run
            return SIGTRAP, ""
        pc = self._linear_pc(loop)
        original = self.software.get(pc)
        # Over HLT (or from its wait): run to the next instruction instead of stepping.
        until = pc if debug.halted(vcpu) else pc + 1 if self._at_hlt(pc, original) else None
        if original is not None:
            self._memory().write(self.planted[pc], bytes((original,)))
        if until is None:
            control, dr = self._control(step=True, skip=pc)
            control &= ~debug.GUESTDBG_USE_SW_BP
            self._set_step_debug(vcpu, control, dr)
        else:
            control, dr = self._control(skip=pc, first=until)
            debug.set_guest_debug(vcpu, control, dr)
        kicked = threading.Event()
        me = threading.get_ident()

        def kick() -> None:
            kicked.set()
            vcpu.set_immediate_exit(True)
            signal.pthread_kill(me, KICK_SIGNAL)

        guard: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if watch is not None and until is not None:
            guard = watch(kick)
        vcpu.set_immediate_exit(False)
        kind, signo = "", SIGTRAP
        self.stepping_from = pc if original is not None else None
        try:
            with guard:
                kind, signo = self._step_once(loop, original, kicked, until)
        finally:
            self.stepping_from = None
            vcpu.set_immediate_exit(True)
            if original is not None:
                self._memory().write(self.planted[pc], b"\xcc")
            self._arm([loop])
        return signo, kind

    def _step_once(self, loop: VcpuLoop, original: int | None, kicked: threading.Event,
                   until: int | None) -> tuple[str, int]:
        """Run until the step's end: a single-step exit, or (``until``) the hardware
        breakpoint there, or a breakpoint of ours met on the way; Ctrl-C (``kicked``)."""
        vcpu = loop.vcpu
        while True:
            try:
                vcpu.run()
            except (InterruptedError, BlockingIOError):
                if kicked.is_set():
                    return "", SIGINT
                continue
            exit = exits.decode(vcpu.run_mmap)
            if isinstance(exit, exits.Debug):
                pc = self._linear_pc(loop)
                if until is None or pc == until:
                    return "", SIGTRAP
                kind = self._kind(pc, exit)
                if kind:
                    return kind, SIGTRAP
            elif isinstance(exit, exits.InternalError) and original is None and \
                    self._linear_pc(loop) in self.software:
                return "swbreak", SIGTRAP
            elif isinstance(exit, exits.Halt):
                # No in-kernel irqchip: nothing can wake it, the vCPU is done (as in the
                # exit loop); its thread ends at the next resume.
                loop.halted = True
                return "", SIGTRAP
            handler = None
            if until is None and isinstance(exit, exits.InternalError):
                handler = self._own_int3_handler(loop)
            if loop._exit(exit):  # an access (or an ending) the instruction made
                return "", SIGTRAP
            if until is None and isinstance(exit, exits.InternalError):
                if handler is None:
                    return "", SIGTRAP  # finished in userspace (emulate.py): stepped
                # The guest's own int3, injected as #BP: stepping into it would push our
                # TF in its frame (and kvm_pvm drops the event under BLOCKIRQ), so the step
                # runs to the handler's first instruction instead, as a CPU steps into it.
                until = handler
                control, dr = self._control(first=handler)
                debug.set_guest_debug(vcpu, control, dr)

    def _own_int3_handler(self, loop: VcpuLoop) -> int | None:
        """At the guest's own ``int3`` outside real mode: the linear address of its #BP
        handler by the IDT gate (SDM vol. 3, 6.14.1 and 6.11: 16-byte gates in long mode,
        8-byte ones else; the handler's segment taken to have CS's base). Else None."""
        pc = self._linear_pc(loop)
        sregs = loop.vcpu.get_sregs()
        if not sregs.cr0 & target.CR0_PE or self.read_memory(pc, 1)[0] != _INT3:
            return None
        wide = bool(sregs.efer & target.EFER_LMA)
        size = 16 if wide else 8
        if (debug.BP_VECTOR + 1) * size - 1 > sregs.idt.limit:
            return None
        gate = self.read_memory(int(sregs.idt.base) + debug.BP_VECTOR * size, size)
        low, _, _, _, high = struct.unpack_from("<HHBBH", gate)
        offset = int(low) | int(high) << 16
        if wide:
            return offset | int(struct.unpack_from("<I", gate, 8)[0]) << 32
        return (int(sregs.cs.base) + offset) & 0xFFFFFFFF

    def _at_hlt(self, pc: int, original: int | None) -> bool:
        """The instruction at ``pc`` is ``HLT``. A single-stepped HLT ends with
        ``KVM_EXIT_DEBUG`` and the halt is lost (kvm_pvm keeps it pending, to strike at a
        later instruction): it is run to the next instruction instead, which it reaches
        when an interrupt wakes it (in-kernel irqchip), or it halts for good
        (``KVM_EXIT_HLT``)."""
        try:
            byte = original if original is not None else self.read_memory(pc, 1)[0]
        except OSError:
            return False
        return byte == _HLT

    def _set_step_debug(self, vcpu: VcpuFd, control: int, dr: tuple[int, ...]) -> None:
        """Guest debugging for a step, with interrupts held off where KVM can."""
        if self.block_irq:
            try:
                debug.set_guest_debug(vcpu, control | debug.GUESTDBG_BLOCKIRQ, dr)
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.block_irq = False  # an older KVM: steps may enter interrupt handlers
        debug.set_guest_debug(vcpu, control, dr)

    def _take_pending(self, thread: int | None = None) -> Stop | None:
        """The next pending stop (of ``thread`` only, if given) that still holds: its vCPU
        is still at that breakpoint. Stale ones (the breakpoint removed, the PC moved) go."""
        with self.lock:
            candidates = [p for p in self.pending if thread is None or p.thread == thread]
        for stop in candidates:
            with self.lock:
                self.pending.remove(stop)
            try:
                pc = self._linear_pc(self._loop(stop.thread))
            except OSError:
                continue
            if pc == stop.pc and pc in (self.software if stop.kind == "swbreak"
                                         else self.hardware):
                return stop
        return None

    def _report(self, stop: Stop) -> str:
        self._replant()
        self.current = stop.thread
        self.last_stop = (stop.thread, stop.kind)
        return self.stop_reply(stop.thread, SIGTRAP, stop.kind)

    def cont(self, watch: Watch | None = None) -> str | None:
        """A pending stop's reply if one holds (nothing runs); else step every vCPU that sits
        on a breakpoint off it, resume the run and return None. A step off that ends
        otherwise (a breakpoint on the way, Ctrl-C while it waits in ``HLT``) is the
        reply, and nothing resumes."""
        pending = self._take_pending()
        if pending is not None:
            return self._report(pending)
        for loop in self.machine.vcpus:
            if loop.halted:
                continue
            try:
                pc = self._linear_pc(loop)
            except OSError:
                continue
            if pc in self.software or pc in self.hardware:
                signo, kind = self._step(loop.index, watch)
                if signo != SIGTRAP or kind:
                    self.current = loop.index
                    self.last_stop = (loop.index, kind)
                    return self.stop_reply(loop.index, signo, kind)
        self._arm(self.machine.vcpus)
        with self.lock:
            self.stops.clear()
            self.pending.clear()
            self.hold_start = False
        self.machine.resume()
        return None

    def stop_reply(self, thread: int, signal: int, kind: str = "") -> str:
        reason = f"{kind}:;" if kind else ""
        return f"T{signal:02x}thread:{thread + 1:x};{reason}"

    def _seen(self) -> Stop | None:
        """After a pause: the first breakpoint stop its vCPUs took (reported now), the others
        kept pending; None when there is none."""
        with self.lock:
            stops = [stop for stop in self.stops if stop.kind and stop.thread >= 0]
            self.stops.clear()
            self.pending += stops[1:]
        return stops[0] if stops else None

    def wait_stop(self, interrupted: Callable[[], bool]) -> str | None:
        """After a resume: wait for a vCPU's stop, an interrupt (``interrupted()`` true) or
        the end of the run; the reply (``W..`` at the end), None if the stub closed."""
        while True:
            with self.lock:
                if not self.stops:
                    self.lock.wait(0.05)
                if any(stop.thread < 0 for stop in self.stops):
                    return self.ended()  # the machine closes: its run is over
                hit = bool(self.stops)
            if hit:
                if not self.machine.pause():
                    return self.ended()
                stop = self._seen()
                if stop is not None:
                    return self._report(stop)
                self.machine.resume()  # nothing to report after all: run on
                continue
            if self.machine.state not in IN_RUN or self.machine.state is RunState.STOPPING:
                return self.ended()
            if interrupted():
                if not self.machine.pause():
                    return self.ended()
                stop = self._seen()  # a breakpoint taken meanwhile is the better answer
                if stop is not None:
                    return self._report(stop)
                self.last_stop = (self.current, "")
                return self.stop_reply(self.current, SIGINT)

    def ended(self) -> str:
        """The run is over: ``W`` with the guest's exit status (the process's, as
        ``xinterface run`` would exit with it), 0 when it halted or was stopped."""
        code = self.machine.exit_code
        return f"W{(code or 0) & 0xFF:02x}"

    def attach(self) -> str:
        """A debugger connects: the run stops (or is held at its start) for it."""
        while self.machine.state is RunState.IDLE:
            with self.lock:
                if any(stop.thread < 0 for stop in self.stops):
                    return self.ended()
            self.machine.wait_for(RunState.RUNNING, 0.05)
        if not self.machine.pause():
            return self.ended()
        with self.lock:
            first = self.stops[0].thread if self.stops and self.stops[0].thread >= 0 \
                else self.current
            self.stops.clear()  # holds at the start: no breakpoint is set before attach
            self.pending.clear()
        self.attached = True
        self.current = first
        self.last_stop = (first, "")
        return self.stop_reply(first, SIGINT)

    def detach(self) -> None:
        """Take every breakpoint out and let the guest go on (also when GDB just leaves)."""
        self.attached = False
        with self.lock:
            self.pending.clear()
        if self.machine.state is not RunState.PAUSED:
            return
        try:
            self.remove_all()
            self._arm(self.machine.vcpus)
        except OSError:
            pass
        with self.lock:
            self.hold_start = False
        self.machine.resume()
