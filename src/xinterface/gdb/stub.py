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
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from ..errors import XInterfaceError
from ..kvm import debug, exits
from ..memory import GuestMemory
from ..runner.vcpu_loop import VcpuLoop
from ..runstate import IN_RUN, RunState
from . import target

SIGINT, SIGTRAP = 2, 5
_DR7_ENABLE = 0x1  # L0; slot i is bit 2*i (Intel SDM vol. 3, 18.2.4, execute, length 1)
_DR6_HITS = 0xF


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
        self.hardware: list[int] = []        # linear addresses in DR0..DR3
        self.stops: list[tuple[int, str]] = []  # (vCPU index, stop kind) not yet reported
        self.current = 0                     # Hg's vCPU
        self.last_stop = (0, "")
        self.monitor = monitor
        self.attached = False

    # --- the vCPU threads' side (vcpu_loop.DebugHook) --------------------------------------
    def hold(self, loop: VcpuLoop) -> bool:
        with self.lock:
            if not self.hold_start:
                return False
            self.stops.append((loop.index, ""))
            self.lock.notify_all()
        return self.machine.request_pause()

    def stop(self, loop: VcpuLoop, exit: exits.Debug | exits.InternalError) -> bool:
        try:
            pc = self._linear_pc(loop)
        except OSError:
            return False
        with self.lock:
            kind = ""
            if pc in self.software:
                kind = "swbreak"
            elif isinstance(exit, exits.Debug) and exit.dr6 & _DR6_HITS and self.hardware:
                kind = "hwbreak"
            if not kind:
                return False  # not the stub's: the run goes on as without it
            self.stops.append((loop.index, kind))
            self.lock.notify_all()
        return self.machine.request_pause()

    def close(self) -> None:
        with self.lock:
            self.hold_start = False
            self.stops.append((-1, "closed"))
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
            if start <= bp < start + len(out):
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
    def insert(self, kind: int, addr: int) -> str:
        if kind == 0:
            if addr not in self.software:
                original = self.read_memory(addr, 1)[0]
                self.write_memory(addr, b"\xcc")
                self.software[addr] = original
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
            self.write_memory(addr, bytes((original,)))
        elif kind == 1 and addr in self.hardware:
            self.hardware.remove(addr)
        elif kind > 1:
            return ""
        return "OK"

    def remove_all(self) -> None:
        for addr in list(self.software):
            self.remove(0, addr)
        self.hardware.clear()

    def _control(self, step: bool = False, skip: int | None = None) -> tuple[int, tuple[int, ...]]:
        control = 0
        dr: list[int] = [0] * 8
        if self.software:
            control |= debug.GUESTDBG_ENABLE | debug.GUESTDBG_USE_SW_BP
        hardware = [a for a in self.hardware if a != skip]
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
    def step(self, thread: int) -> str:
        """One instruction of vCPU ``thread`` on this thread (the others stay parked); the
        stop reply. A breakpoint under it is taken out for that instruction."""
        loop = self._loop(thread)
        vcpu = loop.vcpu
        pc = self._linear_pc(loop)
        original = self.software.get(pc)
        if original is not None:
            self._memory().write(self._physical(pc), bytes((original,)))
        control, dr = self._control(step=True, skip=pc)
        debug.set_guest_debug(vcpu, control & ~debug.GUESTDBG_USE_SW_BP, dr)
        vcpu.set_immediate_exit(False)
        kind = ""
        try:
            while True:
                try:
                    vcpu.run()
                except (InterruptedError, BlockingIOError):
                    continue
                exit = exits.decode(vcpu.run_mmap)
                if isinstance(exit, exits.Debug):
                    break
                if isinstance(exit, exits.InternalError) and original is None and \
                        self._linear_pc(loop) in self.software:
                    kind = "swbreak"
                    break
                if isinstance(exit, exits.Halt):
                    break  # HLT: the step is over, the vCPU waits there
                if loop._exit(exit):  # an access (or an ending) the instruction made
                    break
        finally:
            vcpu.set_immediate_exit(True)
            if original is not None:
                self._memory().write(self._physical(pc), b"\xcc")
            self._arm([loop])
        self.last_stop = (thread, kind)
        return self.stop_reply(thread, SIGTRAP, kind)

    def cont(self) -> None:
        """Step every vCPU that sits on a breakpoint off it, then resume the run."""
        for loop in self.machine.vcpus:
            try:
                pc = self._linear_pc(loop)
            except OSError:
                continue
            if pc in self.software or pc in self.hardware:
                self.step(loop.index)
        self._arm(self.machine.vcpus)
        with self.lock:
            self.stops.clear()
            self.hold_start = False
        self.machine.resume()

    def stop_reply(self, thread: int, signal: int, kind: str = "") -> str:
        reason = f"{kind}:;" if kind else ""
        return f"T{signal:02x}thread:{thread + 1:x};{reason}"

    def wait_stop(self, interrupted: Callable[[], bool]) -> str | None:
        """After a resume: wait for a vCPU's stop, an interrupt (``interrupted()`` true) or
        the end of the run; the reply (``W..`` at the end), None if the stub closed."""
        while True:
            with self.lock:
                if not self.stops:
                    self.lock.wait(0.05)
                stop = self.stops[0] if self.stops else None
                self.stops.clear()
            if stop is not None:
                thread, kind = stop
                if thread < 0:  # the machine closes: its run is over
                    return self.ended()
                if not self.machine.pause():
                    return self.ended()
                self.current = thread
                self.last_stop = stop
                return self.stop_reply(thread, SIGTRAP, kind)
            if self.machine.state not in IN_RUN or self.machine.state is RunState.STOPPING:
                return self.ended()
            if interrupted():
                if not self.machine.pause():
                    return self.ended()
                with self.lock:
                    self.stops.clear()
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
                if self.stops and self.stops[-1][0] < 0:
                    return self.ended()
            self.machine.wait_for(RunState.RUNNING, 0.05)
        if not self.machine.pause():
            return self.ended()
        with self.lock:
            stop = self.stops[0] if self.stops else (self.current, "")
            self.stops.clear()
        self.attached = True
        self.last_stop = stop
        return self.stop_reply(stop[0], SIGTRAP if stop[1] else SIGINT, stop[1])

    def detach(self) -> None:
        """Take every breakpoint out and let the guest go on (also when GDB just leaves)."""
        self.attached = False
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
