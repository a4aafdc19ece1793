"""The fixed low-memory layout of a direct Linux boot, and the guest's memory map (e820).

Addresses below 1 MiB follow the PC conventions Linux expects (Documentation/x86/boot.rst,
"Memory layout"): the real-mode IVT and BIOS data area in the first 4 KiB are left alone, the
legacy VGA/ROM window 0xA0000-0xFFFFF is not RAM to the kernel, and the MP table sits in the
BIOS area 0xF0000-0xFFFFF, which Linux scans for it (MultiProcessor Specification 1.4, 4.1).
"""

from __future__ import annotations

from ...memory import GuestMemory

GDT_ADDR = 0x500            # after the BIOS data area (0x400-0x4FF)
START_INFO_ADDR = 0x6000    # PVH: hvm_start_info, then the module list and the memory map
ZERO_PAGE_ADDR = 0x7000     # bzImage: struct boot_params
PAGE_TABLES_ADDR = 0x9000   # bzImage 64-bit entry: PML4, PDPT, 4 PDs (identity map of 4 GiB)
CMDLINE_ADDR = 0x20000
CMDLINE_MAX = 0x10000       # room reserved for the command line (the kernel's limit is lower)
ISA_HOLE_START = 0xA0000    # legacy VGA memory and option/BIOS ROMs (Linux: ISA_START_ADDRESS)
BIOS_AREA_START = 0xF0000   # the MP table goes here; reported reserved
HIGH_MEMORY = 0x100000      # 1 MiB: the protected-mode kernel of a bzImage loads here
FOUR_GIB = 1 << 32

# e820 types (ACPI 6.5, 15.1 "Address Range Types"; Linux arch/x86/include/uapi/asm/e820.h,
# Xen's hvm_memmap_table_entry uses the same numbers).
E820_RAM = 1
E820_RESERVED = 2

E820Entry = tuple[int, int, int]  # (address, size, type)


def memory_map(memory: GuestMemory) -> list[E820Entry]:
    """The guest's RAM as e820 entries: writable regions, minus the ISA hole, plus the BIOS
    area as reserved. Read-only regions (firmware ROM) are not RAM."""
    entries: list[E820Entry] = []
    for region in memory.regions:
        if region.readonly:
            continue
        start, end = region.gpa, region.end
        if start < HIGH_MEMORY and end > ISA_HOLE_START:
            if start < ISA_HOLE_START:
                entries.append((start, ISA_HOLE_START - start, E820_RAM))
            start = HIGH_MEMORY
        if start < end:
            entries.append((start, end - start, E820_RAM))
    entries.append((BIOS_AREA_START, HIGH_MEMORY - BIOS_AREA_START, E820_RESERVED))
    entries.sort()
    return _merge(entries)


def _merge(entries: list[E820Entry]) -> list[E820Entry]:
    """Adjacent entries of one type become one (regions split by a ROM alias, say)."""
    out: list[E820Entry] = []
    for addr, size, kind in entries:
        if out and out[-1][2] == kind and out[-1][0] + out[-1][1] == addr:
            prev = out.pop()
            out.append((prev[0], prev[1] + size, kind))
        else:
            out.append((addr, size, kind))
    return out


def low_ram_top(memory: GuestMemory) -> int:
    """The end of the RAM region holding 1 MiB (where kernels and initrds go)."""
    region = memory.region_at(HIGH_MEMORY)
    if region is None or region.readonly:
        return 0
    end = region.end
    while True:
        nxt = memory.region_at(end)
        if nxt is None or nxt.readonly:
            return end
        end = nxt.end
