"""Firmware at the reset vector: the image below 4 GiB, its tail below 1 MiB, vCPU 0 at reset.

The image is mapped read-only (``KVM_MEM_READONLY``) to end at 4 GiB, and its last 128 KiB
also at 0xE0000-0xFFFFF as writable memory shared with it, as QEMU's microvm does for RAM
firmware (SeaBIOS keeps its data in that segment). Guest writes to the high ROM exit as MMIO,
where nobody claims them. vCPU 0 gets the architectural reset state (Intel SDM Vol. 3A,
9.1.1): CS selector 0xF000 with base 0xFFFF0000, IP 0xFFF0, so it fetches 16 bytes below 4 GiB.
"""

from __future__ import annotations

import errno
import os

from ..errors import XInterfaceError
from ..kvm import VcpuFd, uapi
from ..memory import GuestMemory, seal_size

FOUR_GIB = 1 << 32
BIOS_ALIAS_SIZE = 128 << 10   # the firmware's tail seen below 1 MiB (0xE0000-0xFFFFF)
BIOS_ALIAS_END = 1 << 20
FIRMWARE_MIN, FIRMWARE_MAX = 64 << 10, 16 << 20
RESET_CR0 = 0x60000010        # CD, NW and ET set after reset
RESET_CS_BASE = 0xFFFF0000
RESET_IP = 0xFFF0


def load_firmware(memory: GuestMemory, vcpu: VcpuFd, data: bytes) -> None:
    size = len(data)
    if not FIRMWARE_MIN <= size <= FIRMWARE_MAX or size % uapi.PAGE_SIZE:
        raise XInterfaceError(errno.EINVAL, f"firmware of {size} bytes: it must be a multiple "
                              f"of 4 KiB from {FIRMWARE_MIN >> 10} KiB to "
                              f"{FIRMWARE_MAX >> 20} MiB", argument="firmware", value=size)
    alias = min(size, BIOS_ALIAS_SIZE)
    base = BIOS_ALIAS_END - alias
    _check_fits(memory, FOUR_GIB - size, size, base, alias)
    fd = os.memfd_create("xinterface-firmware", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.write(fd, data)
        seal_size(fd)
        rom = memory.add_region(FOUR_GIB - size, size, readonly=True, memfd=fd)
        try:
            # RAM under the alias gives way to it, whether it covers the alias or ends inside.
            for region in [r for r in memory.regions
                           if not r.readonly and r.gpa < BIOS_ALIAS_END and r.end > base]:
                start, end = max(base, region.gpa), min(BIOS_ALIAS_END, region.end)
                memory.punch(start, end - start)
            memory.add_region(base, alias, memfd=fd, offset=size - alias)
        except BaseException:
            memory.remove_region(rom)  # a retry must not find it (EEXIST)
            raise
    finally:
        os.close(fd)
    sregs = vcpu.get_sregs()
    sregs.cs.selector, sregs.cs.base, sregs.cs.limit = 0xF000, RESET_CS_BASE, 0xFFFF
    for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        seg.selector, seg.base, seg.limit = 0, 0, 0xFFFF
    sregs.cr0 = RESET_CR0
    sregs.cr3 = sregs.cr4 = sregs.efer = 0
    vcpu.set_sregs(sregs)
    regs = uapi.kvm_regs()
    regs.rip, regs.rflags = RESET_IP, 0x2
    vcpu.set_regs(regs)


def _check_fits(memory: GuestMemory, rom: int, size: int, base: int, alias: int) -> None:
    """``EINVAL`` unless the image can be mapped: nothing at ``[rom, 4 GiB)``, and nothing
    read-only under the alias (RAM there is punched for it). Checked before anything is
    mapped, so that a refused image leaves the memory as it was."""
    for region in memory.regions:
        overlaps_rom = region.gpa < FOUR_GIB and rom < region.end
        if overlaps_rom or (region.readonly and region.gpa < base + alias and base < region.end):
            what = (f"the ROM ({rom:#x}+{size:#x})" if overlaps_rom else
                    f"its alias below 1 MiB ({base:#x}+{alias:#x})")
            raise XInterfaceError(
                errno.EINVAL, f"firmware of {size:#x} bytes: {what} overlaps guest memory at "
                f"{region.gpa:#x}+{region.size:#x}", argument="firmware", value=size)
