"""The MC146818 CMOS/RTC at ports 0x70 (index) and 0x71 (data), with the host's time.

Register map: the MC146818A datasheet (time, alarm, status A-D) and the PC convention for the
rest (IBM PC/AT BIOS: memory sizes at 0x15-0x18 and 0x30-0x31; QEMU/Bochs add 0x34-0x35 for
RAM above 16 MiB in 64 KiB units and 0x5b-0x5d above 4 GiB), which SeaBIOS reads.
"""

from __future__ import annotations

import errno
import time

from ..errors import XInterfaceError
from ..interface import XInterface, XIOEventFlags, XIORange
from .persist import State, field_int

INDEX_PORT = 0x70
DATA_PORT = 0x71
NMI_DISABLE = 0x80  # bit 7 of the index masks NMIs; not part of the register number

REG_SECONDS, REG_MINUTES, REG_HOURS = 0x00, 0x02, 0x04
REG_WEEKDAY, REG_DAY, REG_MONTH, REG_YEAR = 0x06, 0x07, 0x08, 0x09
REG_STATUS_A, REG_STATUS_B, REG_STATUS_C, REG_STATUS_D = 0x0A, 0x0B, 0x0C, 0x0D
REG_CENTURY = 0x32
STATUS_A_DEFAULT = 0x26   # 32.768 kHz time base, 1.024 kHz rate; UIP clear
STATUS_B_24H = 0x02       # 24-hour mode, BCD
STATUS_D_VRT = 0x80       # valid RAM and time (battery good)
_TIME_REGS = {REG_SECONDS, REG_MINUTES, REG_HOURS, REG_WEEKDAY, REG_DAY, REG_MONTH, REG_YEAR,
              REG_CENTURY}


def _bcd(value: int) -> int:
    return ((value // 10) << 4) | (value % 10)


def memory_registers(low_ram: int, high_ram: int) -> dict[int, int]:
    """RAM sizes as the PC BIOS convention stores them: ``low_ram`` below 4 GiB, the rest."""
    ext_kib = min(max(low_ram - (1 << 20), 0) >> 10, 0xFFFF)      # above 1 MiB, in KiB
    above_16m = min(max(low_ram - (16 << 20), 0) >> 16, 0xFFFF)   # in 64 KiB units
    above_4g = high_ram >> 16                                     # in 64 KiB units
    return {0x15: 0x80, 0x16: 0x02,                               # 640 KiB base memory
            0x17: ext_kib & 0xFF, 0x18: ext_kib >> 8,
            0x30: ext_kib & 0xFF, 0x31: ext_kib >> 8,
            0x34: above_16m & 0xFF, 0x35: above_16m >> 8,
            0x5B: above_4g & 0xFF, 0x5C: (above_4g >> 8) & 0xFF, 0x5D: (above_4g >> 16) & 0xFF}


class Cmos:
    """128 bytes of CMOS; the time registers read the host clock (UTC) when read."""

    def __init__(self, ram: dict[int, int] | None = None) -> None:
        self.ram = bytearray(128)
        self.ram[REG_STATUS_A] = STATUS_A_DEFAULT
        self.ram[REG_STATUS_B] = STATUS_B_24H
        self.ram[REG_STATUS_D] = STATUS_D_VRT
        for reg, value in (ram or {}).items():
            self.ram[reg] = value
        self.index = 0
        self._range: XIORange | None = None

    def attach(self, intf: XInterface) -> None:
        self._range = intf.iorange(INDEX_PORT, 2, XIOEventFlags.PIO, read=self._read,
                                   write=self._write, name="cmos")

    def detach(self) -> None:
        if self._range is not None:
            self._range.deassign()
            self._range = None

    # --- snapshot (devices/persist.py): the 128 bytes and the index register ---------------
    def save(self) -> State:
        return {"ram": self.ram.hex(), "index": self.index}

    def load(self, state: State) -> None:
        index = field_int(state, "index", 0, 0x7F)
        ram = state.get("ram")
        try:
            data = bytes.fromhex(ram) if isinstance(ram, str) else b""
        except ValueError:
            data = b""
        if len(data) != len(self.ram):
            raise XInterfaceError(errno.EINVAL, "saved CMOS state: ram must be hex of "
                                  f"{len(self.ram)} bytes", argument="ram", value=ram)
        self.ram[:] = data
        self.index = index

    def _write(self, offset: int, data: bytes) -> None:
        if offset == 0:
            self.index = data[0] & ~NMI_DISABLE & 0x7F
        elif self.index not in _TIME_REGS and self.index not in (REG_STATUS_C, REG_STATUS_D):
            self.ram[self.index] = data[0]

    def _read(self, offset: int, size: int) -> bytes:
        if offset == 0:
            return bytes([0xFF] * size)  # the index port is write-only
        return bytes([self.register(self.index)]) * size

    def register(self, reg: int) -> int:
        if reg in _TIME_REGS:
            now = time.gmtime()
            value = {REG_SECONDS: now.tm_sec, REG_MINUTES: now.tm_min, REG_HOURS: now.tm_hour,
                     REG_WEEKDAY: (now.tm_wday + 1) % 7 + 1, REG_DAY: now.tm_mday,
                     REG_MONTH: now.tm_mon, REG_YEAR: now.tm_year % 100,
                     REG_CENTURY: now.tm_year // 100}[reg]
            return _bcd(value)
        if reg == REG_STATUS_C:
            return 0  # no interrupt flags: the RTC raises no interrupts here
        return self.ram[reg]
