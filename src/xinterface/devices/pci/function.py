"""One PCI function: a type 0 configuration header with BARs, an expansion ROM BAR, a
capability list and the command register, as firmware and operating systems program them.

PCI Local Bus Specification 3.0: 6.1 (header), 6.2.2 (command register), 6.2.5 (base
address registers: the guest sizes a BAR by writing all-ones and reading back the size mask,
then writes the address it chose), 6.2.5.2 (expansion ROM BAR), 6.7 (capabilities list).

A BAR is *mapped* when its decode is enabled in the command register (I/O space or memory
space bit) and it holds an address other than 0 or the sizing pattern. Whenever that
changes, the BAR's ``on_map(base or None)`` callback runs: the device deassigns what it had
registered at the old address and registers at the new one through the xinterface. The guest
owns the addresses; the device only follows them.
"""

from __future__ import annotations

import errno
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ...errors import XInterfaceError
from ..persist import Persistent
from .config import config_header

# Header offsets (6.1).
COMMAND = 0x04
STATUS = 0x06
BAR0 = 0x10
SUBSYSTEM_VENDOR = 0x2C
SUBSYSTEM_ID = 0x2E
ROM_BAR = 0x30
CAPABILITIES_POINTER = 0x34
INTERRUPT_LINE = 0x3C
INTERRUPT_PIN = 0x3D

COMMAND_IO = 1 << 0        # I/O space decode
COMMAND_MEMORY = 1 << 1    # memory space decode
COMMAND_MASTER = 1 << 2    # bus master (DMA)
COMMAND_INTX_DISABLE = 1 << 10
_COMMAND_WRITABLE = COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER | COMMAND_INTX_DISABLE
STATUS_CAPABILITIES = 1 << 4
STATUS_INTERRUPT = 1 << 3

BAR_IO = 0x1               # bit 0 of an I/O BAR
BAR_MEM64 = 0x4            # type field (bits 2:1) = 10b: 64-bit memory BAR
BAR_PREFETCH = 0x8
ROM_ENABLE = 0x1
ROM_MIN_SIZE = 0x800        # the ROM BAR's address bits start at bit 11
CAPABILITIES_START = 0x40  # first byte after the standard header
CONFIG_SIZE = 256


@dataclass
class Bar:
    """Base address register ``index``: ``size`` bytes (a power of two) of I/O or memory."""

    index: int
    size: int
    io: bool = False
    mem64: bool = False
    prefetchable: bool = False
    on_map: Callable[[int | None], None] | None = None
    address: int = 0          # what the guest wrote, size-aligned
    mapped: int | None = None  # the base currently decoded, or None

    @property
    def flags(self) -> int:
        if self.io:
            return BAR_IO
        return (BAR_MEM64 if self.mem64 else 0) | (BAR_PREFETCH if self.prefetchable else 0)


class PciFunction:
    """A function's configuration space. Subclasses (or owners) add BARs and capabilities
    before the function is put on a host bridge; the guest then reads and writes it."""

    def __init__(self, vendor: int, device: int, class_code: int, *, revision: int = 0,
                 subsystem_vendor: int = 0, subsystem: int = 0, header_type: int = 0,
                 interrupt_pin: int = 0, rom: bytes | None = None,
                 on_rom_map: Callable[[int | None], None] | None = None) -> None:
        self.config = config_header(vendor, device, class_code, header_type)
        self.config[0x08] = revision
        struct.pack_into("<HH", self.config, SUBSYSTEM_VENDOR, subsystem_vendor, subsystem)
        self.config[INTERRUPT_PIN] = interrupt_pin  # 1 = INTA#
        self.bars: dict[int, Bar] = {}
        self.rom = rom
        # 6.2.5.2: the ROM BAR decodes address bits 31:11, so a ROM takes 2 KiB at least.
        self.rom_size = max(_pow2(len(rom)), ROM_MIN_SIZE) if rom else 0
        self._rom_address = 0
        self.rom_mapped: int | None = None
        self._on_rom_map = on_rom_map
        self._cap_end = CAPABILITIES_START
        self._cap_last = CAPABILITIES_POINTER
        self.lock = threading.RLock()
        # What saves the state behind this function (its device), for a snapshot of the
        # host bridge it sits on; None: the configuration space is all there is.
        self.persist: Persistent | None = None

    # --- building -----------------------------------------------------------------------------
    def add_bar(self, index: int, size: int, *, io: bool = False, mem64: bool = False,
                prefetchable: bool = False,
                on_map: Callable[[int | None], None] | None = None) -> Bar:
        """BAR ``index`` of ``size`` bytes (rounded up to a power of two, at least 16 for
        memory and 4 for I/O). A 64-bit BAR takes ``index`` and ``index + 1``."""
        if not 0 <= index < 6 or (mem64 and index == 5) or index in self.bars:
            raise ValueError(f"BAR {index} is not free")
        size = max(_pow2(size), 4 if io else 16)
        bar = Bar(index, size, io, mem64 and not io, prefetchable, on_map)
        self.bars[index] = bar
        struct.pack_into("<I", self.config, BAR0 + 4 * index, bar.flags)
        return bar

    def add_capability(self, cap_id: int, body: bytes) -> int:
        """Append a capability (``cap_id``, next pointer, then ``body``); its offset."""
        offset = self._cap_end
        length = (2 + len(body) + 3) & ~3
        if offset + length > CONFIG_SIZE:
            raise ValueError("configuration space full")
        self.config[offset] = cap_id
        self.config[offset + 1] = 0
        self.config[offset + 2 : offset + 2 + len(body)] = body
        self.config[self._cap_last] = offset  # the pointer, or the previous capability's next
        self._cap_last = offset + 1
        self._cap_end = offset + length
        struct.pack_into("<H", self.config, STATUS,
                         struct.unpack_from("<H", self.config, STATUS)[0] | STATUS_CAPABILITIES)
        return offset

    # --- the guest's view -----------------------------------------------------------------------
    @property
    def command(self) -> int:
        return int(struct.unpack_from("<H", self.config, COMMAND)[0])

    @property
    def interrupt_pin(self) -> int:
        return self.config[INTERRUPT_PIN]

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset``; past the end reads all-ones."""
        with self.lock:
            data = bytes(self.config[offset : offset + size])
            return data.ljust(size, b"\xff")

    def write(self, offset: int, data: bytes) -> None:
        """A guest write: only what the hardware lets change changes."""
        with self.lock:
            end = offset + len(data)
            if offset < COMMAND + 2 and end > COMMAND:
                self._write_command(offset, data)
            if offset < STATUS + 2 and end > STATUS:
                pass  # status bits are read-only or write-1-to-clear; nothing to clear here
            for index in range(6):
                reg = BAR0 + 4 * index
                if offset < reg + 4 and end > reg:
                    self._write_bar(index, offset, data)
            if offset < ROM_BAR + 4 and end > ROM_BAR:
                self._write_rom(offset, data)
            if offset <= INTERRUPT_LINE < end:
                self.config[INTERRUPT_LINE] = data[INTERRUPT_LINE - offset]
            if offset >= CAPABILITIES_START:
                self.write_capability(offset, data)

    def write_capability(self, offset: int, data: bytes) -> None:
        """A write inside the capability area; capabilities here are read-only by default."""

    # --- registers ------------------------------------------------------------------------------
    def _merge(self, reg: int, width: int, offset: int, data: bytes) -> int:
        """The register at ``reg`` after a write of ``data`` at ``offset`` (any overlap)."""
        current = bytearray(self.config[reg : reg + width])
        for i, byte in enumerate(data):
            if 0 <= offset + i - reg < width:
                current[offset + i - reg] = byte
        return int.from_bytes(current, "little")

    def _write_command(self, offset: int, data: bytes) -> None:
        value = self._merge(COMMAND, 2, offset, data)
        old = self.command
        new = (old & ~_COMMAND_WRITABLE) | (value & _COMMAND_WRITABLE)
        struct.pack_into("<H", self.config, COMMAND, new)
        if (old ^ new) & (COMMAND_IO | COMMAND_MEMORY):
            self._remap()

    def _write_bar(self, index: int, offset: int, data: bytes) -> None:
        reg = BAR0 + 4 * index
        value = self._merge(reg, 4, offset, data)
        bar = self.bars.get(index)
        if bar is None:
            high = self.bars.get(index - 1)
            if high is not None and high.mem64:  # the upper half of a 64-bit BAR
                mask = ~(high.size - 1) >> 32 & 0xFFFFFFFF
                struct.pack_into("<I", self.config, reg, value & mask)
                high.address = (high.address & 0xFFFFFFFF) | ((value & mask) << 32)
                self._remap()
            return  # an unimplemented BAR reads 0 (6.2.5.1)
        mask = ~(bar.size - 1) & 0xFFFFFFFF
        low = (value & mask) | bar.flags
        struct.pack_into("<I", self.config, reg, low)
        bar.address = (bar.address & ~0xFFFFFFFF) | (low & ~0xF & mask)
        self._remap()

    def _write_rom(self, offset: int, data: bytes) -> None:
        value = self._merge(ROM_BAR, 4, offset, data)
        if not self.rom_size:
            return
        mask = ~(self.rom_size - 1) & 0xFFFFF800
        struct.pack_into("<I", self.config, ROM_BAR, (value & mask) | (value & ROM_ENABLE))
        self._rom_address = value & mask
        self._remap()

    def _bar_base(self, bar: Bar) -> int | None:
        """Where ``bar`` decodes now: its address while its space is enabled, unless it is
        0, the sizing pattern, or past the end of its space."""
        enabled = self.command & (COMMAND_IO if bar.io else COMMAND_MEMORY)
        address = bar.address & ~(bar.size - 1)
        limit = 1 << 16 if bar.io else 1 << (64 if bar.mem64 else 32)
        sizing = address == ((limit - 1) & ~(bar.size - 1))
        return address if enabled and address and not sizing and (
            address + bar.size <= limit) else None

    def _rom_base(self) -> int | None:
        if not self.rom_size:
            return None
        rom_reg = struct.unpack_from("<I", self.config, ROM_BAR)[0]
        address = self._rom_address
        on = (self.command & COMMAND_MEMORY and rom_reg & ROM_ENABLE and address
              and address != 0xFFFFF800 & ~(self.rom_size - 1))
        return address if on else None

    def decoded(self) -> list[tuple[str, bool, int, int]]:
        """``(name, io, base, size)`` of every BAR (``bar4``) and the ROM (``rom``) that
        decodes now."""
        out = [(f"bar{bar.index}", bar.io, base, bar.size) for bar in self.bars.values()
               if (base := self._bar_base(bar)) is not None]
        rom = self._rom_base()
        return out + ([("rom", False, rom, self.rom_size)] if rom is not None else [])

    def _remap(self) -> None:
        """Tell each BAR's owner where it decodes now, if that changed."""
        for bar in self.bars.values():
            base = self._bar_base(bar)
            if base != bar.mapped:
                bar.mapped = base
                if bar.on_map is not None:
                    bar.on_map(base)
        base = self._rom_base()
        if self.rom_size and base != self.rom_mapped:
            self.rom_mapped = base
            if self._on_rom_map is not None:
                self._on_rom_map(base)

    def remap(self) -> None:
        """Register each BAR where its registers say (after :meth:`load_config`)."""
        with self.lock:
            self._remap()

    # --- snapshot -------------------------------------------------------------------------
    def writable_capability(self, offset: int) -> bool:
        """Whether the guest can change byte ``offset`` of the capability area (a snapshot's
        configuration may differ from the built one there); none by default."""
        return False

    def _writable(self, offset: int) -> bool:
        if offset in (COMMAND, COMMAND + 1, INTERRUPT_LINE):
            return True
        if BAR0 <= offset < BAR0 + 24:
            index = (offset - BAR0) // 4
            low = self.bars.get(index - 1)
            return index in self.bars or (low is not None and low.mem64)
        if ROM_BAR <= offset < ROM_BAR + 4:
            return bool(self.rom_size)
        return offset >= CAPABILITIES_START and self.writable_capability(offset)

    def load_config(self, data: bytes, where: str) -> None:
        """A saved configuration space: it must be the function as built but for what the
        guest can write, each register as hardware would hold it (``EINVAL`` naming
        ``<where>.config[<offset>]``). The BARs are not registered yet (:meth:`remap`)."""
        def bad(offset: int, why: str) -> XInterfaceError:
            return XInterfaceError(errno.EINVAL, f"saved device state: {where}.config"
                                   f"[{offset:#x}] {why}", argument=f"{where}.config",
                                   value=offset)

        built = self.config
        if len(data) != len(built):
            raise bad(0, f"is {len(data)} bytes, not {len(built)}")
        for i, (new, old) in enumerate(zip(data, built, strict=True)):
            if new != old and not self._writable(i):
                raise bad(i, f"is {new:#04x}: that register reads {old:#04x} (read-only)")
        command = struct.unpack_from("<H", data, COMMAND)[0]
        if command & ~_COMMAND_WRITABLE != self.command & ~_COMMAND_WRITABLE:
            raise bad(COMMAND, f"command {command:#06x} sets bits that are read-only")
        addresses: dict[int, int] = {}
        for index, bar in self.bars.items():
            low = struct.unpack_from("<I", data, BAR0 + 4 * index)[0]
            if low & (bar.size - 1) != bar.flags:
                raise bad(BAR0 + 4 * index, f"BAR {index} {low:#x} is not {bar.size:#x}-"
                          f"aligned with its type bits {bar.flags:#x}")
            address = low & ~0xF
            if bar.mem64:
                high = struct.unpack_from("<I", data, BAR0 + 4 * index + 4)[0]
                if high & ~((~(bar.size - 1) >> 32) & 0xFFFFFFFF):
                    raise bad(BAR0 + 4 * index + 4, f"BAR {index}'s upper half {high:#x} "
                              "holds size bits")
                address |= high << 32
            addresses[index] = address
        rom = struct.unpack_from("<I", data, ROM_BAR)[0]
        if self.rom_size and rom & ~(~(self.rom_size - 1) & 0xFFFFF800 | ROM_ENABLE):
            raise bad(ROM_BAR, f"ROM BAR {rom:#x} holds size bits")
        with self.lock:
            self.config[:] = data
            # ``mapped`` stays what is registered now: remap() moves it to where these say.
            for index, address in addresses.items():
                self.bars[index].address = address
            self._rom_address = rom & ~ROM_ENABLE if self.rom_size else 0

    def rom_read(self, offset: int, size: int) -> bytes:
        """The expansion ROM's bytes (zero-padded to the BAR's size)."""
        rom = self.rom or b""
        return rom[offset : offset + size].ljust(size, b"\0")

    def bar_sizing_value(self, index: int) -> int:
        """What a read after an all-ones write returns (for tests and documentation)."""
        bar = self.bars[index]
        return (~(bar.size - 1) & 0xFFFFFFFF) | bar.flags


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())
