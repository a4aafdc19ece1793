"""The Linux loaders on real guest memory: what lands where (zero page, hvm_start_info, MP
table, vCPU state), and one clear error, with memory untouched, for each malformed input."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

import xinterface as xi
from tests.conftest import needs_kvm
from tests.loader import images
from xinterface.loader.linux import LoadedKernel, load_linux

pytestmark = needs_kvm

MiB = 1 << 20
ZERO_PAGE = 0x7000
START_INFO = 0x6000
CMDLINE = 0x20000
MP_FLOATING = 0xF0000


@pytest.fixture
def machine() -> Iterator[xi.Machine]:
    with xi.Machine(memory=64 * MiB) as m:
        yield m


def load(m: xi.Machine, kernel: bytes, **kw: object) -> LoadedKernel:
    assert m.memory is not None
    return load_linux(m.memory, [v.vcpu for v in m.vcpus], kernel, **kw)  # type: ignore[arg-type]


def read(m: xi.Machine, gpa: int, n: int) -> bytes:
    assert m.memory is not None
    return m.memory.read(gpa, n)


def u32(m: xi.Machine, gpa: int) -> int:
    return int(struct.unpack("<I", read(m, gpa, 4))[0])


def e820_of_zero_page(m: xi.Machine) -> list[tuple[int, int, int]]:
    count = read(m, ZERO_PAGE + 0x1E8, 1)[0]
    return [struct.unpack("<QQI", read(m, ZERO_PAGE + 0x2D0 + 20 * i, 20)) for i in range(count)]


# --- bzImage ----------------------------------------------------------------------------------

def test_bzimage_zero_page_kernel_initrd_and_entry(machine: xi.Machine) -> None:
    image = images.bzimage()
    initrd = b"initrd!" * 1000
    loaded = load(machine, image, initrd=initrd, cmdline="console=ttyS0 quiet")
    assert loaded.protocol == "bzimage" and loaded.version == "6.1.0-synthetic"
    # The protected-mode kernel (after 3 sectors of setup) at 1 MiB, entered at +0x200.
    assert read(machine, 0x100000, 8192) == image[3 * 512:]
    assert loaded.entry == 0x100200
    # Zero page: the image's setup header copied, then the loader's fields (boot.rst).
    assert read(machine, ZERO_PAGE + 0x202, 4) == b"HdrS"
    assert struct.unpack("<H", read(machine, ZERO_PAGE + 0x206, 2))[0] == 0x020F
    assert read(machine, ZERO_PAGE + 0x210, 1) == b"\xff"            # type_of_loader
    assert u32(machine, ZERO_PAGE + 0x228) == CMDLINE                 # cmd_line_ptr
    assert read(machine, CMDLINE, 21) == b"console=ttyS0 quiet\0\0"[:21]
    rd_gpa, rd_size = u32(machine, ZERO_PAGE + 0x218), u32(machine, ZERO_PAGE + 0x21C)
    assert (rd_gpa, rd_size) == loaded.initrd and rd_size == len(initrd)
    assert read(machine, rd_gpa, rd_size) == initrd
    # As high as possible: page aligned, in the last page that holds it, above the kernel.
    assert rd_gpa % 4096 == 0 and 64 * MiB - 4096 < rd_gpa + rd_size <= 64 * MiB
    assert rd_gpa >= 0x1000000 + 0x200000                             # pref_address + init_size
    assert e820_of_zero_page(machine) == [(0, 0xA0000, 1), (0xF0000, 0x10000, 2),
                                          (0x100000, 63 * MiB, 1)]
    assert read(machine, MP_FLOATING, 4) == b"_MP_"
    # 64-bit boot protocol: long mode, paging, __BOOT_CS/__BOOT_DS, RSI = zero page.
    vcpu = machine.vcpus[0].vcpu
    regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
    assert (regs.rip, regs.rsi, regs.rflags) == (0x100200, ZERO_PAGE, 2)
    assert sregs.cs.selector == 0x10 and sregs.cs.l == 1
    assert sregs.ds.selector == sregs.ss.selector == 0x18
    assert sregs.cr0 & (1 << 31) and sregs.efer & (1 << 10) and sregs.cr4 & (1 << 5)
    # The identity map covers the kernel and the initrd (2 MiB pages).
    pml4 = sregs.cr3
    pdpt = struct.unpack("<Q", read(machine, pml4, 8))[0] & ~0xFFF
    pd = struct.unpack("<Q", read(machine, pdpt, 8))[0] & ~0xFFF
    for addr in (0x100200, rd_gpa):
        pde = struct.unpack("<Q", read(machine, pd + 8 * (addr >> 21), 8))[0]
        assert pde & 0x81 == 0x81 and pde & ~0xFFF == addr & ~0x1FFFFF


def test_bzimage_initrd_respects_initrd_addr_max(machine: xi.Machine) -> None:
    loaded = load(machine, images.bzimage(initrd_addr_max=0x2FFFFFF), initrd=b"x" * 10000,
                  mptable=False)
    assert loaded.mptable is None and read(machine, MP_FLOATING, 4) == bytes(4)
    assert loaded.initrd is not None
    gpa, size = loaded.initrd
    assert gpa + size <= 0x3000000 and gpa + size > 0x3000000 - 4096


@pytest.mark.parametrize(("image", "words"), [
    (images.bzimage(magic=b"HdrX"), "no 'HdrS' magic"),
    (images.bzimage(boot_flag=0x1234), "boot_flag"),
    (images.bzimage(version=0x0205), "boot protocol 2.05 is too old"),
    (images.bzimage(xloadflags=0), "no 64-bit entry point"),
    (images.bzimage(loadflags=0), "zImage"),
    (images.bzimage()[:0x200], "too short for a Linux setup header"),
    (b"\x00" * 4096, "neither an ELF vmlinux nor a bzImage"),
], ids=["magic", "boot-flag", "old-protocol", "not-64-bit", "zimage", "truncated", "garbage"])
def test_bad_bzimage_one_clear_error(machine: xi.Machine, image: bytes, words: str) -> None:
    with pytest.raises(xi.XInterfaceError, match=words) as info:
        load(machine, image)
    assert info.value.argument == "kernel"
    assert read(machine, 0x100000, 16) == bytes(16)   # nothing written


def test_kernel_that_does_not_fit() -> None:
    with xi.Machine(memory=16 * MiB) as m, pytest.raises(
            xi.XInterfaceError, match=r"kernel .* does not fit in guest RAM") as info:
        load(m, images.bzimage(pref_address=0x1000000, init_size=0x800000))
    assert info.value.argument == "kernel"


def test_initrd_that_does_not_fit(machine: xi.Machine) -> None:
    with pytest.raises(xi.XInterfaceError, match=r"initrd of .* does not fit") as info:
        load(machine, images.bzimage(), initrd=bytes(60 * MiB))
    assert info.value.argument == "initrd"
    assert read(machine, 0x100000, 16) == bytes(16)
    assert read(machine, ZERO_PAGE, 4096) == bytes(4096)


def test_initrd_below_a_low_initrd_addr_max_that_the_kernel_fills(machine: xi.Machine) -> None:
    with pytest.raises(xi.XInterfaceError, match="initrd"):
        load(machine, images.bzimage(initrd_addr_max=0x11FFFFF), initrd=bytes(MiB))


@pytest.mark.parametrize(("cmdline", "words"), [
    ("x" * 2048, "at most 2047"),
    ("caf\u00e9", "ASCII"),
    ("a\0b", "NUL"),
])
def test_bad_command_line(machine: xi.Machine, cmdline: str, words: str) -> None:
    with pytest.raises(xi.XInterfaceError, match=words) as info:
        load(machine, images.bzimage(), cmdline=cmdline)
    assert info.value.argument == "cmdline"


# --- PVH ---------------------------------------------------------------------------------------

def test_pvh_segments_start_info_and_entry(machine: xi.Machine) -> None:
    data = bytes(range(256)) * 16
    image = images.vmlinux(segments=[(0x200000, data, 0x2000)], entry=0x200010)
    initrd = b"cpio" * 777
    # Dirty the bss first: the loader must zero memsz beyond filesz.
    assert machine.memory is not None
    machine.memory.write(0x201000, b"\xff" * 0x1000)
    loaded = load(machine, image, initrd=initrd, cmdline="console=ttyS0")
    assert loaded.protocol == "pvh" and loaded.entry == 0x200010
    assert read(machine, 0x200000, 0x1000) == data
    assert read(machine, 0x201000, 0x1000) == bytes(0x1000)
    magic, version, flags, nr_modules = struct.unpack("<IIII", read(machine, START_INFO, 16))
    assert (magic, version, flags, nr_modules) == (0x336EC578, 1, 0, 1)
    modlist, cmdline, rsdp, memmap = struct.unpack("<QQQQ", read(machine, START_INFO + 16, 32))
    entries = u32(machine, START_INFO + 48)
    assert rsdp == 0 and read(machine, cmdline, 14) == b"console=ttyS0\0"
    mod_gpa, mod_size = struct.unpack("<QQ", read(machine, modlist, 16))
    assert (mod_gpa, mod_size) == loaded.initrd and read(machine, mod_gpa, mod_size) == initrd
    table = [struct.unpack("<QQI", read(machine, memmap + 24 * i, 20)) for i in range(entries)]
    assert table == [(0, 0xA0000, 1), (0xF0000, 0x10000, 2), (0x100000, 63 * MiB, 1)]
    # pvh.pandoc: 32-bit protected mode, paging off, flat segments, EBX = start info.
    vcpu = machine.vcpus[0].vcpu
    regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
    assert (regs.rip, regs.rbx, regs.rflags) == (0x200010, START_INFO, 2)
    assert sregs.cr0 & 1 and not sregs.cr0 & (1 << 31) and sregs.efer == 0
    assert sregs.cs.db == 1 and sregs.cs.l == 0 and sregs.cs.base == 0
    assert sregs.cs.limit == 0xFFFFFFFF and sregs.ds.limit == 0xFFFFFFFF
    assert sregs.tr.type == 0xB and sregs.tr.present == 1


@pytest.mark.parametrize(("image", "words"), [
    (images.vmlinux(entry=None), "no PVH entry"),
    (images.vmlinux(machine=40), "EM_ARM"),
    (images.vmlinux(truncate=200), "outside the"),
    (images.vmlinux()[:40], "not a valid ELF kernel"),
    (images.vmlinux(entry=0x900000), "lies in no loaded segment"),
    (images.vmlinux(segments=[(0xFFFFF000, bytes(16), 0x2000)], entry=0xFFFFF000), "4 GiB"),
    (images.vmlinux(notes=images.note(b"Xen", 18, b"\x10\x00")), "no PVH entry"),
], ids=["no-note", "arm", "truncated-segment", "truncated-header", "entry-outside",
        "above-4g", "short-note"])
def test_bad_vmlinux_one_clear_error(machine: xi.Machine, image: bytes, words: str) -> None:
    with pytest.raises(xi.XInterfaceError, match=words) as info:
        load(machine, image)
    assert info.value.argument == "kernel"


def test_vmlinux_overlapping_the_boot_tables(machine: xi.Machine) -> None:
    image = images.vmlinux(segments=[(0x5000, bytes(0x2000), 0x2000)], entry=0x5000)
    with pytest.raises(xi.XInterfaceError, match=r"kernel segment at 0x5000 \(gpa "
                       r"0x5000-0x6fff\) overlaps the hvm_start_info \(gpa 0x6000-") as info:
        load(machine, image, cmdline="x")
    assert info.value.argument == "kernel"
    assert read(machine, 0x500, 8) == bytes(8)   # not even the GDT was written


def test_vmlinux_larger_than_memory() -> None:
    image = images.vmlinux(segments=[(0x200000, b"k", 32 * MiB)], entry=0x200000)
    with xi.Machine(memory=16 * MiB) as m, pytest.raises(
            xi.XInterfaceError, match="does not fit in guest RAM") as info:
        load(m, image)
    assert info.value.argument == "kernel"


# --- MP table ----------------------------------------------------------------------------------

def test_mp_table_for_smp() -> None:
    with xi.Machine(memory=64 * MiB, vcpus=3) as m:
        loaded = load(m, images.bzimage())
        assert loaded.mptable == MP_FLOATING
        floating = read(m, MP_FLOATING, 16)
        assert floating[:4] == b"_MP_" and sum(floating) % 256 == 0
        assert floating[8] == 1 and floating[9] == 4       # 16 bytes, spec 1.4
        table_gpa = struct.unpack_from("<I", floating, 4)[0]
        header = read(m, table_gpa, 44)
        length, count = struct.unpack_from("<H", header, 4)[0], struct.unpack_from("<H",
                                                                                   header, 34)[0]
        table = read(m, table_gpa, length)
        assert header[:4] == b"PCMP" and sum(table) % 256 == 0
        assert struct.unpack_from("<I", header, 36)[0] == 0xFEE00000
        pos, kinds, cpus = 44, [], []
        for _ in range(count):
            kind = table[pos]
            kinds.append(kind)
            if kind == 0:
                cpus.append((table[pos + 1], table[pos + 3]))   # APIC id, flags
            pos += 20 if kind == 0 else 8
        assert pos == length
        assert cpus == [(0, 3), (1, 1), (2, 1)]                # vCPU 0 is the bootstrap CPU
        assert kinds.count(1) == 1 and kinds.count(2) == 1     # ISA bus, one I/O APIC
        assert kinds.count(4) == 2                             # ExtINT on LINT0, NMI on LINT1
        pos, pins = 44 + 20 * 3, {}
        for kind in kinds[3:]:
            if kind == 3:
                flags, irq, pin = (struct.unpack_from("<H", table, pos + 2)[0], table[pos + 5],
                                   table[pos + 7])
                pins[pin] = (irq, flags)
            pos += 8
        # ISA IRQs but the cascade on their own pins, bus default flags; pins 16-23 (virtio-mmio
        # on microvm) level-triggered, active high.
        assert pins == {**{n: (n, 0) for n in range(16) if n != 2},
                        **{n: (n, 0xD) for n in range(16, 24)}}
        # The MP table's area is reserved in the memory map the kernel gets.
        assert (0xF0000, 0x10000, 2) in loaded.e820


def _entries(table: bytes) -> list[bytes]:
    count, pos, out = struct.unpack_from("<H", table, 34)[0], 44, []
    for _ in range(count):
        size = 20 if table[pos] == 0 else 8
        out.append(table[pos:pos + size])
        pos += size
    assert pos == len(table)
    return out


def test_mp_table_lists_pci_interrupts() -> None:
    # What PciHost.route_intx gives for virtio functions in slots 3 and 4 (INTA#).
    pci = [(3, 1, 11), (4, 1, 11), (5, 2, 10)]
    with xi.Machine(memory=64 * MiB) as m:
        load(m, images.bzimage(), pci_interrupts=pci)
        table_gpa = struct.unpack_from("<I", read(m, MP_FLOATING, 16), 4)[0]
        length = struct.unpack_from("<H", read(m, table_gpa, 8), 4)[0]
        table = read(m, table_gpa, length)
    assert sum(table) % 256 == 0
    entries = _entries(table)
    buses = {e[1]: e[2:8] for e in entries if e[0] == 1}
    # PCI bus 0 is MP bus 0 (Linux matches a device's bus number against it), ISA after it.
    assert buses == {0: b"PCI   ", 1: b"ISA   "}
    io = [(e[4], e[5], e[7], struct.unpack_from("<H", e, 2)[0]) for e in entries if e[0] == 3]
    by_bus: dict[int, list[tuple[int, int, int]]] = {0: [], 1: []}
    for bus, source_irq, pin, flags in io:
        by_bus[bus].append((source_irq, pin, flags))
    # One entry per function's pin: source IRQ = slot << 2 | pin - 1, level, active high.
    assert by_bus[0] == [(3 << 2, 11, 0xD), (4 << 2, 11, 0xD), (5 << 2 | 1, 10, 0xD)]
    # The ISA entries of the IRQs PCI took are gone; the rest as without PCI.
    isa_pins = {pin for _, pin, _ in by_bus[1]}
    assert 10 not in isa_pins and 11 not in isa_pins and {0, 1, 4, 8, 16, 23} <= isa_pins
    local = [e for e in entries if e[0] == 4]
    assert [e[4] for e in local] == [1, 1]                  # ExtINT and NMI from the ISA bus


@pytest.mark.parametrize("bad", [[(3, 0, 11)], [(3, 5, 11)], [(32, 1, 11)], [(3, 1, 24)]])
def test_bad_pci_interrupt_is_einval(machine: xi.Machine, bad: list[tuple[int, int, int]]
                                     ) -> None:
    with pytest.raises(xi.XInterfaceError) as info:
        load(machine, images.bzimage(), pci_interrupts=bad)
    assert info.value.argument == "pci_interrupts"
    assert read(machine, MP_FLOATING, 4) == bytes(4)      # nothing written
