"""Direct Linux boot: a bzImage through the x86 boot protocol, or a vmlinux through PVH.

``load_linux`` looks at the image, places the kernel, command line, initrd and boot tables
(checked first, written only when everything fits), and sets vCPU 0 at the kernel's entry.
The other vCPUs stay in their reset state: the kernel starts them with INIT/SIPI through the
in-kernel local APICs, so SMP needs ``irqchip=True`` and the MP table (``mptable=True``).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from ...errors import XInterfaceError
from ...kvm import VcpuFd, uapi
from ...memory import GuestMemory
from .. import cpu
from . import bzimage, pvh
from .layout import (
    BIOS_AREA_START,
    CMDLINE_ADDR,
    CMDLINE_MAX,
    FOUR_GIB,
    GDT_ADDR,
    HIGH_MEMORY,
    PAGE_TABLES_ADDR,
    START_INFO_ADDR,
    ZERO_PAGE_ADDR,
    low_ram_top,
    memory_map,
)
from .mptable import mptable
from .placement import Placement

__all__ = ["LoadedKernel", "load_linux"]

PAGE = uapi.PAGE_SIZE
# The kernel's own limit for PVH (arch/x86/include/asm/setup.h COMMAND_LINE_SIZE = 2048, NUL
# included); a bzImage says its limit in cmdline_size.
PVH_CMDLINE_MAX = 2047
# GDT of the boot: boot.rst asks for __BOOT_CS = 0x10 and __BOOT_DS = 0x18 at the 64-bit
# entry; PVH wants flat 32-bit code and data and a 32-bit TSS (pvh.pandoc).
SEL_CODE32 = 0x08
SEL_CODE64 = 0x10
SEL_DATA = 0x18
SEL_TSS = 0x20
TSS_TYPE_BUSY_32 = 0xB
TSS_LIMIT = 0x67
_PTE_PRESENT_RW = 0x3
_PDE_LARGE = 1 << 7
PAGE_TABLE_PAGES = 6           # PML4, PDPT and 4 page directories of 2 MiB pages


@dataclass(frozen=True)
class LoadedKernel:
    """What was loaded where: enough to explain a boot."""

    protocol: str                         # "bzimage" or "pvh"
    entry: int
    kernel: tuple[int, int]               # (gpa, bytes) the kernel may use before its own map
    cmdline: str
    initrd: tuple[int, int] | None
    boot_info: int                        # zero page (bzImage) or hvm_start_info (PVH)
    mptable: int | None
    e820: tuple[tuple[int, int, int], ...]
    version: str = ""                     # the bzImage's kernel_version string


def _tss_segment() -> uapi.kvm_segment:
    seg = uapi.kvm_segment()
    seg.selector, seg.type, seg.present, seg.limit = SEL_TSS, TSS_TYPE_BUSY_32, 1, TSS_LIMIT
    return seg


def _gdt() -> bytes:
    entries = [
        0,
        cpu.descriptor(cpu.segment(SEL_CODE32, code=True, bits=32)),
        cpu.descriptor(cpu.segment(SEL_CODE64, code=True, bits=64)),
        cpu.descriptor(cpu.segment(SEL_DATA, code=False, bits=32)),
        cpu.descriptor(_tss_segment()),
    ]
    return struct.pack(f"<{len(entries)}Q", *entries)


def _page_tables(base: int) -> bytes:
    """Identity map of the low 4 GiB with 2 MiB pages: PML4 at ``base``, PDPT, then 4 PDs."""
    pml4 = struct.pack("<Q", (base + PAGE) | _PTE_PRESENT_RW).ljust(PAGE, b"\0")
    pdpt = struct.pack("<4Q", *((base + (2 + i) * PAGE) | _PTE_PRESENT_RW for i in range(4)))
    pds = struct.pack("<2048Q", *((i << 21) | _PTE_PRESENT_RW | _PDE_LARGE for i in range(2048)))
    return pml4 + pdpt.ljust(PAGE, b"\0") + pds


def _check_cmdline(cmdline: str, limit: int) -> bytes:
    try:
        raw = cmdline.encode("ascii")
    except UnicodeEncodeError:
        raise XInterfaceError(errno.EINVAL, "the kernel command line must be ASCII",
                              argument="cmdline", value=cmdline) from None
    if b"\0" in raw:
        raise XInterfaceError(errno.EINVAL, "the kernel command line contains a NUL byte",
                              argument="cmdline", value=cmdline)
    if len(raw) > limit:
        raise XInterfaceError(errno.E2BIG, f"kernel command line of {len(raw)} bytes: this "
                              f"kernel takes at most {limit}", argument="cmdline",
                              value=len(raw))
    return raw + b"\0"


def _place_initrd(place: Placement, initrd: bytes, *, above: int, limit: int) -> tuple[int, int]:
    """The initrd at the highest page below ``limit`` (boot.rst: as high as possible, ending
    by initrd_addr_max) and above the kernel."""
    size = len(initrd)
    gpa = place.free_below(limit, size, above, PAGE) if size else None
    if gpa is None:
        raise XInterfaceError(
            errno.ENOMEM, f"initrd of {size:#x} bytes does not fit in guest RAM between the "
            f"kernel's end {above:#x} and {limit:#x}", argument="initrd", value=size)
    place.claim("initrd", gpa, size, argument="initrd")
    place.write(gpa, initrd)
    return gpa, size


def _mptable(place: Placement, vcpus: Sequence[VcpuFd],
             pci_interrupts: Sequence[tuple[int, int, int]]) -> int:
    leaf1 = next((e for e in vcpus[0].get_cpuid2() if e.function == 1), None)
    try:
        table = mptable(BIOS_AREA_START, len(vcpus),
                        cpu_signature=leaf1.eax if leaf1 else 0,
                        cpu_features=leaf1.edx if leaf1 else 0, pci_interrupts=pci_interrupts)
    except ValueError as exc:
        raise XInterfaceError(errno.EINVAL, str(exc), argument="pci_interrupts",
                              value=pci_interrupts) from None
    place.claim("MP table", BIOS_AREA_START, len(table), argument="vcpus")
    place.write(BIOS_AREA_START, table)
    return BIOS_AREA_START


def load_linux(memory: GuestMemory, vcpus: Sequence[VcpuFd], kernel: bytes, *,
               initrd: bytes | None = None, cmdline: str = "",
               mptable: bool = True,
               pci_interrupts: Sequence[tuple[int, int, int]] = ()) -> LoadedKernel:
    """Load ``kernel`` (a bzImage, or an ELF vmlinux with a PVH note) and point vCPU 0 at it.

    ``mptable``: write an MP table describing every vCPU and KVM's in-kernel I/O APIC (for a
    machine with ``irqchip=True``). Without it Linux finds one CPU and only the 8259, and
    ticks through the PIT's IRQ 0 instead of the local APIC timer. ``pci_interrupts``:
    ``(slot, pin, irq)`` of the PCI functions on bus 0, for the MP table (what
    :meth:`~xinterface.devices.pci.PciHost.route_intx` returns), so that a kernel without
    ACPI finds their interrupts.
    Raises ``XInterfaceError`` (argument ``kernel``, ``initrd``, ``cmdline``) for an image
    that is malformed or does not fit; guest memory is untouched then.
    """
    if not vcpus:
        raise XInterfaceError(errno.EINVAL, "no vCPU to start the kernel on",
                              argument="vcpus", value=0)
    kernel = bytes(kernel)
    place = Placement(memory)
    gdt = _gdt()
    place.claim("boot GDT", GDT_ADDR, len(gdt), argument="memory")
    place.write(GDT_ADDR, gdt)
    table = _mptable(place, vcpus, pci_interrupts) if mptable else None
    e820 = memory_map(memory)
    if pvh.is_elf(kernel):
        loaded = _load_pvh(place, vcpus[0], kernel, initrd, cmdline, e820, table)
    else:
        loaded = _load_bzimage(place, vcpus[0], kernel, initrd, cmdline, e820, table)
    return loaded


def _load_bzimage(place: Placement, vcpu: VcpuFd, image: bytes, initrd: bytes | None,
                  cmdline: str, e820: list[tuple[int, int, int]],
                  table: int | None) -> LoadedKernel:
    header = bzimage.parse_setup_header(image)
    raw_cmdline = _check_cmdline(cmdline, min(header.cmdline_size, CMDLINE_MAX - 1))
    place.claim("zero page", ZERO_PAGE_ADDR, bzimage.BP_SIZE, argument="memory")
    tables = PAGE_TABLE_PAGES * PAGE
    place.claim("page tables", PAGE_TABLES_ADDR, tables, argument="memory")
    place.write(PAGE_TABLES_ADDR, _page_tables(PAGE_TABLES_ADDR))
    place.claim("command line", CMDLINE_ADDR, len(raw_cmdline), argument="cmdline")
    place.write(CMDLINE_ADDR, raw_cmdline)
    payload = image[header.setup_size:]
    # A relocatable kernel loaded below pref_address runs (decompresses itself) at
    # pref_address, needing init_size bytes from there (boot.rst, init_size).
    run_at = max(HIGH_MEMORY, header.pref_address)
    end = max(HIGH_MEMORY + len(payload), run_at + header.init_size)
    place.claim("kernel", HIGH_MEMORY, end - HIGH_MEMORY, argument="kernel")
    place.write(HIGH_MEMORY, payload)
    rd = None
    if initrd is not None:
        limit = min(header.initrd_addr_max + 1, low_ram_top(place.memory), FOUR_GIB)
        rd = _place_initrd(place, initrd, above=end, limit=limit)
    place.write(ZERO_PAGE_ADDR, bzimage.zero_page(image, header, cmdline_gpa=CMDLINE_ADDR,
                                                  initrd=rd, e820=e820))
    place.commit()
    entry = HIGH_MEMORY + bzimage.ENTRY_64_OFFSET
    _enter_long_mode(vcpu, entry, ZERO_PAGE_ADDR)
    return LoadedKernel("bzimage", entry, (HIGH_MEMORY, end - HIGH_MEMORY), cmdline, rd,
                        ZERO_PAGE_ADDR, table, tuple(e820), header.kernel_version)


def _load_pvh(place: Placement, vcpu: VcpuFd, image: bytes, initrd: bytes | None,
              cmdline: str, e820: list[tuple[int, int, int]], table: int | None) -> LoadedKernel:
    elf = pvh.parse_vmlinux(image)
    raw_cmdline = _check_cmdline(cmdline, PVH_CMDLINE_MAX)
    modules = 0 if initrd is None else 1
    place.claim("hvm_start_info", START_INFO_ADDR, pvh.start_info_size(modules, len(e820)),
                argument="memory")
    place.claim("command line", CMDLINE_ADDR, len(raw_cmdline), argument="cmdline")
    place.write(CMDLINE_ADDR, raw_cmdline)
    for seg in elf.segments:
        place.claim(f"kernel segment at {seg.paddr:#x}", seg.paddr, seg.memsz,
                    argument="kernel")
        place.write(seg.paddr, seg.data + bytes(seg.memsz - len(seg.data)))
    rd = None
    if initrd is not None:
        limit = min(low_ram_top(place.memory), FOUR_GIB)
        rd = _place_initrd(place, initrd, above=elf.end, limit=limit)
    place.write(START_INFO_ADDR, pvh.start_info(START_INFO_ADDR, cmdline_gpa=CMDLINE_ADDR,
                                                initrd=rd, e820=e820))
    place.commit()
    _enter_protected_mode(vcpu, elf.entry, START_INFO_ADDR)
    return LoadedKernel("pvh", elf.entry, (elf.start, elf.end - elf.start), cmdline, rd,
                        START_INFO_ADDR, table, tuple(e820))


def _set_gdt(sregs: uapi.kvm_sregs) -> None:
    sregs.gdt.base = GDT_ADDR
    sregs.gdt.limit = len(_gdt()) - 1
    sregs.idt.base = 0
    sregs.idt.limit = 0
    sregs.tr = _tss_segment()
    sregs.ldt.unusable = 1


def _enter_long_mode(vcpu: VcpuFd, entry: int, zero_page: int) -> None:
    """boot.rst, "64-bit BOOT PROTOCOL": long mode, paging on with an identity map of the
    kernel, zero page and command line, __BOOT_CS/__BOOT_DS, interrupts off, RSI = zero page."""
    sregs = vcpu.get_sregs()
    _set_gdt(sregs)
    sregs.cs = cpu.segment(SEL_CODE64, code=True, bits=64)
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = cpu.segment(SEL_DATA, code=False,
                                                                      bits=64)
    sregs.cr3 = PAGE_TABLES_ADDR
    sregs.cr4 = cpu.CR4_PAE
    sregs.cr0 = cpu.CR0_PE | cpu.CR0_ET | cpu.CR0_PG
    sregs.efer = cpu.EFER_LME | cpu.EFER_LMA
    vcpu.set_sregs(sregs)
    regs = uapi.kvm_regs()
    regs.rip = entry
    regs.rsi = zero_page
    regs.rflags = cpu.RFLAGS_RESERVED
    vcpu.set_regs(regs)


def _enter_protected_mode(vcpu: VcpuFd, entry: int, start_info_gpa: int) -> None:
    """pvh.pandoc: 32-bit protected mode, paging off, flat CS/DS/ES/SS, a 32-bit TSS,
    interrupts off, EBX = the hvm_start_info address."""
    sregs = vcpu.get_sregs()
    _set_gdt(sregs)
    sregs.cs = cpu.segment(SEL_CODE32, code=True, bits=32)
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = cpu.segment(SEL_DATA, code=False,
                                                                      bits=32)
    sregs.cr0 = cpu.CR0_PE | cpu.CR0_ET
    sregs.cr3 = sregs.cr4 = sregs.efer = 0
    vcpu.set_sregs(sregs)
    regs = uapi.kvm_regs()
    regs.rip = entry
    regs.rbx = start_info_gpa
    regs.rflags = cpu.RFLAGS_RESERVED
    vcpu.set_regs(regs)
