"""Instructions KVM's instruction emulator gives up on, finished in userspace.

Where KVM runs a guest's kernel-mode code through its instruction emulator
(``arch/x86/kvm/emulate.c``; on ``kvm_pvm`` hosts every CPL0 instruction of a guest that is
not PVM-aware goes that way), an instruction it does not implement ends ``KVM_RUN`` with
``KVM_EXIT_INTERNAL_ERROR`` (suberror ``KVM_INTERNAL_ERROR_EMULATION``), RIP still at the
instruction and, with ``KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES``, its bytes.

Two are done here. The first is **IRET in protected mode, to the same privilege level**:
the emulator implements IRET in real mode only, so any 32-bit firmware that takes an
interrupt in protected mode (iPXE's interrupt wrappers, a test guest's handler) dies on
its return. The steps are those of the IRET pseudocode (Intel SDM Vol. 2A, "IRET/IRETD/IRETQ",
protected-mode RETURN-TO-SAME-PRIVILEGE-LEVEL): pop EIP, CS and EFLAGS, load CS from its
GDT descriptor, update the flags the current privilege may change. Anything else (a task
return with NT, a return to virtual-8086 mode or to an outer level, paging or long mode, an
LDT selector, a descriptor that would fault) is left alone: the run then ends with the
original error, as before.

The second is **INT3 outside real mode**: the emulator implements software interrupts in
real mode only, so a guest's own ``int3`` (a breakpoint of its own debugger, a kernel's
BUG trap) fails the same way. It is delivered as the CPU does: #BP is a trap, so RIP moves
past the one-byte instruction and the exception is injected (``KVM_SET_VCPU_EVENTS``); the
guest's handler sees the return address after the ``int3``.
"""

from __future__ import annotations

import struct

from ..errors import XInterfaceError
from ..kvm import VcpuFd, debug, uapi
from ..memory import GuestMemory

IRET = 0xCF
INT3 = 0xCC
OPERAND_SIZE = 0x66            # SDM Vol. 2A 2.1.1: the operand-size override prefix
CR0_PE, CR0_PG = 1 << 0, 1 << 31
EFER_LMA = 1 << 10
# EFLAGS (SDM Vol. 1 3.4.3)
IF, IOPL, NT, RF, VM = 1 << 9, 3 << 12, 1 << 14, 1 << 16, 1 << 17
VIF, VIP = 1 << 19, 1 << 20
FIXED_ONE = 1 << 1
# The bits IRET loads at CPL0 with a 32-bit operand (VM is checked apart).
EFLAGS_32 = 0x3F7FD7 & ~VM
# Segment descriptor (SDM Vol. 3A 3.4.5): type bit 3 = code, bit 2 = conforming.
TYPE_CODE, TYPE_CONFORMING, TYPE_ACCESSED = 8, 4, 1
DESCRIPTOR = struct.Struct("<Q")


def emulate(vcpu: VcpuFd, memory: GuestMemory, insn: bytes) -> bool:
    """Finish ``insn`` on ``vcpu`` if it is one handled here; True when done (resume)."""
    operand32: bool | None = None
    at = 0
    while at < len(insn) and insn[at] == OPERAND_SIZE:
        operand32 = False   # toggled below against CS.D
        at += 1
    if at == 0 and insn[:1] == bytes((INT3,)):
        return _int3(vcpu)
    if at >= len(insn) or insn[at] != IRET:
        return False
    try:
        return _iret(vcpu, memory, override=operand32 is not None)
    except XInterfaceError:
        return False        # the stack or the GDT is not RAM: leave it to the original error


def _int3(vcpu: VcpuFd) -> bool:
    regs = vcpu.get_regs()
    regs.rip += 1
    vcpu.set_regs(regs)
    debug.inject_exception(vcpu, debug.BP_VECTOR)
    return True


def _iret(vcpu: VcpuFd, memory: GuestMemory, *, override: bool) -> bool:
    sregs = vcpu.get_sregs()
    if not sregs.cr0 & CR0_PE or sregs.cr0 & CR0_PG or sregs.efer & EFER_LMA:
        return False
    regs = vcpu.get_regs()
    if regs.rflags & (VM | NT):
        return False
    cs, ss = sregs.cs, sregs.ss
    cpl = ss.dpl
    size = 4 if bool(cs.db) != override else 2
    sp = regs.rsp & (0xFFFFFFFF if ss.db else 0xFFFF)
    target = _frame(memory, sregs, ss.base + sp, size, cpl)
    if target is None and ss.base:
        # kvm_pvm pushes the frame of an interrupt it delivers to emulated protected-mode code
        # at linear address ESP, as if SS's base were 0 (a stack segment based at 0x10000
        # gets its frame at ESP, not 0x10000 + ESP: tests/test_emulate.py); iPXE's segments
        # are based at its relocation offset. The handler's own pushes and pops use the
        # base, so its IRET comes back to the same ESP and finds the frame there.
        target = _frame(memory, sregs, sp, size, cpl)
    if target is None:
        return False
    eip, flags, seg = target
    old = regs.rflags
    if size == 4:
        if flags & VM:
            return False    # a return to virtual-8086 mode
        writable = EFLAGS_32
    else:
        writable = 0xFFFF & EFLAGS_32
    if cpl > (old & IOPL) >> 12:
        writable &= ~IF
    if cpl:
        writable &= ~IOPL
    regs.rflags = (old & ~writable) | (flags & writable) | FIXED_ONE
    regs.rip = eip
    sp = (sp + 3 * size) & (0xFFFFFFFF if ss.db else 0xFFFF)
    mask = 0xFFFFFFFF if ss.db else 0xFFFF
    regs.rsp = (regs.rsp & ~mask) | sp
    if (seg.selector, seg.base, seg.limit, seg.type, seg.db) != (
            cs.selector, cs.base, cs.limit, cs.type | TYPE_ACCESSED, cs.db):
        # Only when CS changes: KVM_SET_SREGS also re-queues whatever interrupt KVM had
        # injected (its interrupt_bitmap), which a same-segment return need not touch.
        sregs.cs = seg
        vcpu.set_sregs(sregs)
    vcpu.set_regs(regs)
    return True


def _frame(memory: GuestMemory, sregs: uapi.kvm_sregs, at: int, size: int,
           cpl: int) -> tuple[int, int, uapi.kvm_segment] | None:
    """EIP, EFLAGS and the code segment of a same-privilege return frame at linear ``at``, or
    None if the frame cannot be one (SDM Vol. 2A, IRET: the checks before any state
    changes)."""
    fmt = "<III" if size == 4 else "<HHH"
    eip, selector, flags = struct.unpack(fmt, memory.read(at, 3 * size))
    selector &= 0xFFFF
    if selector & 3 != cpl or selector & 4 or selector < 4:
        return None         # another privilege level, an LDT selector, or the null selector
    if (selector | 7) > sregs.gdt.limit:
        return None
    raw = DESCRIPTOR.unpack(memory.read(sregs.gdt.base + (selector & ~7), 8))[0]
    seg = _segment(raw, selector)
    if seg is None or not seg.type & TYPE_CODE or not seg.present:
        return None
    if (seg.type & TYPE_CONFORMING and seg.dpl > cpl) or (
            not seg.type & TYPE_CONFORMING and seg.dpl != cpl):
        return None
    if size == 2:
        eip &= 0xFFFF
    if eip > seg.limit:
        return None
    return eip, flags, seg


def _segment(raw: int, selector: int) -> uapi.kvm_segment | None:
    """A GDT descriptor as KVM's segment register state (SDM Vol. 3A 3.4.5)."""
    if not raw >> 44 & 1:
        return None         # S = 0: a system descriptor
    limit = (raw & 0xFFFF) | (raw >> 32 & 0xF0000)
    granular = raw >> 55 & 1
    if granular:
        limit = limit << 12 | 0xFFF
    return uapi.kvm_segment(
        base=(raw >> 16 & 0xFFFFFF) | (raw >> 32 & 0xFF000000), limit=limit,
        selector=selector, type=(raw >> 40 & 0xF) | TYPE_ACCESSED, present=raw >> 47 & 1,
        dpl=raw >> 45 & 3, db=raw >> 54 & 1, s=1, l=raw >> 53 & 1, g=granular,
        avl=raw >> 52 & 1, unusable=0)
