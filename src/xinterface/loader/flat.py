"""Flat binaries: an image at a gpa, every vCPU starting at its first byte.

Real mode: CS=DS=ES=SS=0, IP=gpa. Protected: flat 4 GiB segments from our GDT, EIP=gpa.
Long: the same GDT plus identity-mapped page tables over the low 4 GiB (2 MiB pages), RIP=gpa.
Interrupts are off and the stack pointer is ``gpa``, so the stack grows down below the image.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Sequence

from ..errors import XInterfaceError
from ..kvm import VcpuFd, uapi
from ..memory import GuestMemory
from . import cpu

MODES = ("real", "protected", "long")

_PAGE = uapi.PAGE_SIZE
_PTE_PRESENT_RW = 0x3
_PDE_LARGE = 1 << 7
# GDT page, PML4, PDPT and four page directories of 512 x 2 MiB: the low 4 GiB.
_TABLE_PAGES = 7
_REAL_MODE_LIMIT = 0x10000  # with every base 0, real mode reaches 64 KiB


def _segments(mode: str) -> tuple[uapi.kvm_segment, uapi.kvm_segment]:
    if mode == "real":
        return (cpu.segment(0, code=True, bits=16), cpu.segment(0, code=False, bits=16))
    if mode == "protected":
        return (cpu.segment(cpu.SEL_CODE32, code=True, bits=32),
                cpu.segment(cpu.SEL_DATA, code=False, bits=32))
    return (cpu.segment(cpu.SEL_CODE64, code=True, bits=64),
            cpu.segment(cpu.SEL_DATA, code=False, bits=64))


def _gdt() -> bytes:
    entries = [
        0,
        cpu.descriptor(cpu.segment(cpu.SEL_CODE32, code=True, bits=32)),
        cpu.descriptor(cpu.segment(cpu.SEL_DATA, code=False, bits=32)),
        cpu.descriptor(cpu.segment(cpu.SEL_CODE64, code=True, bits=64)),
    ]
    return struct.pack(f"<{len(entries)}Q", *entries)


def _page_tables(base: int) -> bytes:
    """PML4 at ``base``, PDPT after it, then four PDs: identity map of 0..4 GiB."""
    pml4 = struct.pack("<Q", (base + _PAGE) | _PTE_PRESENT_RW).ljust(_PAGE, b"\0")
    pdpt = struct.pack("<4Q", *((base + (2 + i) * _PAGE) | _PTE_PRESENT_RW for i in range(4)))
    pds = struct.pack(
        "<2048Q", *((i << 21) | _PTE_PRESENT_RW | _PDE_LARGE for i in range(2048))
    )
    return pml4 + pdpt.ljust(_PAGE, b"\0") + pds


def _table_area(memory: GuestMemory, gpa: int, end: int) -> int:
    """Where the GDT and page tables go: the top of the lowest region, else after the image."""
    size = _TABLE_PAGES * _PAGE
    candidates = [r.end - size for r in memory.regions if not r.readonly]
    candidates.append((end + _PAGE - 1) // _PAGE * _PAGE)
    for base in candidates:
        region = memory.region_at(base)
        if (region is not None and not region.readonly and base + size <= region.end
                and (base + size <= gpa or base >= end)):
            return base
    raise XInterfaceError(errno.ENOMEM, f"no {size:#x} bytes of guest RAM left outside the "
                          "image for the GDT and page tables", argument="memory", value=None)


def load_flat(memory: GuestMemory, vcpus: Sequence[VcpuFd], image: bytes, gpa: int,
              mode: str) -> None:
    """Copy ``image`` to ``gpa`` and point every vCPU at it in ``mode``."""
    if mode not in MODES:
        raise XInterfaceError(errno.EINVAL, f"mode {mode!r} is not one of {', '.join(MODES)}",
                              argument="mode", value=mode)
    if not isinstance(gpa, int) or gpa < 0:
        raise XInterfaceError(errno.EINVAL, f"gpa {gpa!r} is not a guest-physical address",
                              argument="gpa", value=gpa)
    end = gpa + len(image)
    if mode == "real" and end > _REAL_MODE_LIMIT:
        raise XInterfaceError(errno.EINVAL, f"a real-mode image must end below 64 KiB with "
                              f"segment bases 0: gpa {gpa:#x} + {len(image)} bytes",
                              argument="gpa", value=gpa)
    try:
        memory.spans(gpa, len(image))
    except XInterfaceError as exc:
        raise XInterfaceError(
            errno.EFAULT, f"image of {len(image)} bytes at gpa {gpa:#x} (ending at {end:#x}) "
            f"does not fit in guest RAM ({memory.size:#x} bytes)", argument="image",
            value=len(image)) from exc
    sregs_extra: dict[str, int] = {}
    if mode != "real":
        base = _table_area(memory, gpa, end)
        gdt = _gdt()
        memory.write(base, gdt)
        sregs_extra["gdt_base"] = base
        sregs_extra["gdt_limit"] = len(gdt) - 1
        if mode == "long":
            memory.write(base + _PAGE, _page_tables(base + _PAGE))
            sregs_extra["cr3"] = base + _PAGE
    memory.write(gpa, image)
    code, data = _segments(mode)
    for vcpu in vcpus:
        sregs = vcpu.get_sregs()
        sregs.cs = code
        sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
        # Every bit of the mode is set or cleared, whatever mode the vCPU ran in before: KVM
        # refuses EFER.LMA without CR0.PG (KVM_SET_SREGS: EINVAL), and a protected-mode load
        # after a long-mode run must not leave the vCPU in compatibility mode.
        sregs.cr0 &= ~(cpu.CR0_PE | cpu.CR0_PG)
        # Caches on, as firmware leaves them for what it boots: a reset sets CR0.CD and NW
        # (SDM vol. 3, 9.1.1) and every BIOS clears them; left set, the guest runs uncached
        # wherever the host honours them.
        sregs.cr0 &= ~(cpu.CR0_CD | cpu.CR0_NW)
        sregs.cr4 &= ~cpu.CR4_PAE
        sregs.efer &= ~(cpu.EFER_LME | cpu.EFER_LMA)
        if mode != "real":
            sregs.gdt.base = sregs_extra["gdt_base"]
            sregs.gdt.limit = sregs_extra["gdt_limit"]
            sregs.cr0 |= cpu.CR0_PE | cpu.CR0_ET
        if mode == "long":
            sregs.cr3 = sregs_extra["cr3"]
            sregs.cr4 |= cpu.CR4_PAE
            sregs.cr0 |= cpu.CR0_PG
            sregs.efer |= cpu.EFER_LME | cpu.EFER_LMA
        vcpu.set_sregs(sregs)
        regs = uapi.kvm_regs()
        regs.rip = gpa
        regs.rsp = gpa
        regs.rflags = cpu.RFLAGS_RESERVED
        vcpu.set_regs(regs)
