"""PCI configuration space: BAR sizing and moves, the command register, the expansion ROM
BAR, capability lists and PIRQ routing, as firmware and operating systems program them."""

from __future__ import annotations

import struct

import pytest

from xinterface.devices.pci import PciFunction, PciHost
from xinterface.devices.pci.config import PIIX3_PIRQ_ROUTE
from xinterface.devices.pci.function import (
    BAR0,
    CAPABILITIES_POINTER,
    COMMAND,
    COMMAND_IO,
    COMMAND_MEMORY,
    ROM_BAR,
    STATUS,
    STATUS_CAPABILITIES,
)


def dword(f: PciFunction, offset: int) -> int:
    return int(struct.unpack("<I", f.read(offset, 4))[0])


def wdword(f: PciFunction, offset: int, value: int) -> None:
    f.write(offset, struct.pack("<I", value))


def test_bar_sizing_and_moves_follow_the_command_register() -> None:
    maps: list[tuple[str, int | None]] = []
    f = PciFunction(0x1AF4, 0x1001, 0x010000)
    f.add_bar(0, 0x40, io=True, on_map=lambda base: maps.append(("io", base)))
    f.add_bar(1, 0x1000, on_map=lambda base: maps.append(("mem", base)))
    wdword(f, BAR0, 0xFFFFFFFF)
    assert dword(f, BAR0) == 0xFFFFFFC1            # 64 bytes of I/O
    wdword(f, BAR0 + 4, 0xFFFFFFFF)
    assert dword(f, BAR0 + 4) == 0xFFFFF000        # 4 KiB of 32-bit memory
    wdword(f, BAR0, 0xC040)
    wdword(f, BAR0 + 4, 0xFEBF1234)                # low bits below the size are not kept
    assert dword(f, BAR0 + 4) == 0xFEBF1000
    assert maps == []                              # decode still off
    f.write(COMMAND, struct.pack("<H", COMMAND_IO | COMMAND_MEMORY))
    assert sorted(maps, key=str) == [("io", 0xC040), ("mem", 0xFEBF1000)]
    maps.clear()
    wdword(f, BAR0 + 4, 0xFEBF2000)                # the guest moves the BAR
    assert maps == [("mem", 0xFEBF2000)]
    maps.clear()
    wdword(f, BAR0 + 4, 0xFFFFFFFF)                # sizing with decode on unmaps it
    assert maps == [("mem", None)]
    maps.clear()
    f.write(COMMAND, struct.pack("<H", 0))
    assert maps == [("io", None)]


def test_unimplemented_bars_read_zero_and_64_bit_bars_take_two_registers() -> None:
    maps: list[int | None] = []
    f = PciFunction(0x1AF4, 0x1041, 0x010000)
    f.add_bar(4, 0x4000, mem64=True, on_map=maps.append)
    wdword(f, BAR0 + 8, 0xFFFFFFFF)
    assert dword(f, BAR0 + 8) == 0
    wdword(f, BAR0 + 16, 0xFFFFFFFF)
    wdword(f, BAR0 + 20, 0xFFFFFFFF)
    assert dword(f, BAR0 + 16) == 0xFFFFC004 and dword(f, BAR0 + 20) == 0xFFFFFFFF
    wdword(f, BAR0 + 16, 0x0000C000)
    wdword(f, BAR0 + 20, 0x1)
    f.write(COMMAND, struct.pack("<H", COMMAND_MEMORY))
    assert maps == [0x1_0000_C000]


def test_expansion_rom_bar_maps_only_when_enabled() -> None:
    maps: list[int | None] = []
    f = PciFunction(0x1AF4, 0x1000, 0x020000, rom=b"\x55\xaa" + bytes(5000),
                    on_rom_map=maps.append)
    wdword(f, ROM_BAR, 0xFFFFFFFE)
    assert dword(f, ROM_BAR) == 0xFFFFE000         # 5002 bytes round up to 8 KiB
    wdword(f, ROM_BAR, 0xFEB80000)
    f.write(COMMAND, struct.pack("<H", COMMAND_MEMORY))
    assert maps == []
    wdword(f, ROM_BAR, 0xFEB80001)
    assert maps == [0xFEB80000]
    assert f.rom_read(0, 2) == b"\x55\xaa" and f.rom_read(8190, 4) == bytes(4)


def test_capabilities_are_chained_from_the_pointer() -> None:
    f = PciFunction(0x1AF4, 0x1042, 0x018000)
    first = f.add_capability(0x09, bytes([16, 1]) + bytes(13))
    second = f.add_capability(0x09, bytes([16, 2]) + bytes(13))
    assert struct.unpack("<H", f.read(STATUS, 2))[0] & STATUS_CAPABILITIES
    assert f.read(CAPABILITIES_POINTER, 1)[0] == first
    assert f.read(first + 1, 1)[0] == second and f.read(second + 1, 1)[0] == 0
    f.write(first, b"\x00\x00")                      # read-only
    assert f.read(first, 2) == bytes([0x09, second])
    assert f.read(0xFE, 4) == b"\0\0\xff\xff"       # past the end: all-ones


def test_pirq_routing_rotates_links_by_slot() -> None:
    host = PciHost()
    host.isa.write(PIIX3_PIRQ_ROUTE, bytes([10, 10, 11, 11]))  # what SeaBIOS programs
    assert [host.pirq_gsi(slot, 1) for slot in (1, 2, 3, 4, 5)] == [10, 10, 11, 11, 10]
    assert host.pirq_gsi(3, 2) == 11 and host.pirq_gsi(3, 0) is None
    host.isa.write(PIIX3_PIRQ_ROUTE + 2, b"\x80")
    assert host.pirq_gsi(3, 1) is None


def test_route_intx_does_what_firmware_does() -> None:
    host = PciHost()
    host.add(3, PciFunction(0x1AF4, 0x1001, 0x010000, interrupt_pin=1))
    host.add(4, PciFunction(0x1AF4, 0x1000, 0x020000, interrupt_pin=2))
    host.add(5, PciFunction(0x1234, 0x1111, 0x030000))            # no interrupt pin
    assert host.route_intx() == [(3, 1, 11), (4, 2, 10)]
    assert host.isa.read(PIIX3_PIRQ_ROUTE, 4) == bytes([10, 10, 11, 11])
    # Each function's Interrupt Line says where its pin goes, as the OS reads it.
    assert host.functions[(0, 3, 0)].read(0x3C, 1) == b"\x0b"
    assert host.functions[(0, 4, 0)].read(0x3C, 1) == b"\x0a"
    assert host.functions[(0, 5, 0)].read(0x3C, 1) == b"\x00"
    assert host.pirq_gsi(3, 1) == 11 and host.pirq_gsi(4, 2) == 10


@pytest.mark.parametrize("irqs", [(10, 10, 11), (10, 10, 11, 16), (0, 10, 11, 11)])
def test_route_intx_refuses_what_is_no_isa_irq(irqs: tuple[int, ...]) -> None:
    host = PciHost()
    with pytest.raises(ValueError):
        host.route_intx(irqs)  # type: ignore[arg-type]
    assert host.isa.read(PIIX3_PIRQ_ROUTE, 4) == b"\x80" * 4     # unchanged
